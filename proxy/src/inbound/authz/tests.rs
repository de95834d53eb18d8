use super::matcher::glob;
use super::*;
use mesh_proto::policy::{
    path_match::Kind, AuthorizationPolicy, Operation as PbOp, PathMatch, Rule, Source as PbSrc,
};

const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";

fn caller(id: Option<&str>) -> Caller<'_> {
    Caller {
        identity: id,
        addr: "198.18.0.7".parse().unwrap(),
    }
}

fn get(path: &str) -> Call<'_> {
    Call {
        port: 8080,
        http: Some((&http::Method::GET, path)),
    }
}

fn opaque() -> Call<'static> {
    Call {
        port: 8080,
        http: None,
    }
}

fn ids(ids: &[&str]) -> PbSrc {
    PbSrc {
        identities: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn policy(name: &str, action: pb::Action, rules: Vec<Rule>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.into(),
        action: action.into(),
        rules,
    }
}

fn rule(from: Vec<PbSrc>, to: Vec<PbOp>) -> Rule {
    Rule { from, to }
}

fn server(policies: Vec<AuthorizationPolicy>) -> ServerPolicy {
    ServerPolicy {
        policies,
        ..Default::default()
    }
}

fn compile(p: &ServerPolicy, default: DefaultPolicy) -> (ServerAuthz, Metrics) {
    let metrics = Metrics::new();
    (ServerAuthz::compile(Some(p), default, &metrics), metrics)
}

fn decide(authz: &ServerAuthz, id: Option<&str>, call: Call<'_>) -> (bool, String) {
    let d = authz.decide(&caller(id), &call);
    (d.allowed, d.policy.0.to_string())
}

#[test]
fn an_allow_policy_denies_everyone_it_does_not_name() {
    let p = server(vec![policy(
        "ledger-callers",
        pb::Action::Allow,
        vec![rule(vec![ids(&[PAYMENTS])], vec![])],
    )]);
    let (authz, metrics) = compile(&p, DefaultPolicy::AllowAll);
    assert_eq!(
        decide(&authz, Some(PAYMENTS), get("/")),
        (true, "ledger-callers".into())
    );
    assert_eq!(
        decide(&authz, Some(ORDERS), get("/")),
        (false, "ledger-callers".into())
    );
    assert_eq!(
        decide(&authz, None, get("/")),
        (false, "ledger-callers".into())
    );
    let text = metrics.encode();
    assert!(text.contains("mesh_authz_total{decision=\"allow\",policy=\"ledger-callers\"} 1"));
    assert!(text.contains("mesh_authz_total{decision=\"deny\",policy=\"ledger-callers\"} 2"));
}

#[test]
fn deny_wins_over_allow() {
    let p = server(vec![
        policy(
            "allow-shop",
            pb::Action::Allow,
            vec![rule(
                vec![PbSrc {
                    namespaces: vec!["shop".into()],
                    ..Default::default()
                }],
                vec![],
            )],
        ),
        policy(
            "no-orders",
            pb::Action::Deny,
            vec![rule(vec![ids(&[ORDERS])], vec![])],
        ),
    ]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert_eq!(
        decide(&authz, Some(ORDERS), get("/")),
        (false, "no-orders".into())
    );
    assert_eq!(
        decide(&authz, Some(PAYMENTS), get("/")),
        (true, "allow-shop".into())
    );
    assert_eq!(
        decide(&authz, Some(OPS), get("/")),
        (false, "allow-shop".into())
    );
}

#[test]
fn a_deny_policy_alone_leaves_the_rest_to_the_default() {
    let p = server(vec![policy(
        "no-orders",
        pb::Action::Deny,
        vec![rule(vec![ids(&[ORDERS])], vec![])],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAuthenticated);
    assert!(!decide(&authz, Some(ORDERS), get("/")).0);
    assert_eq!(
        decide(&authz, Some(PAYMENTS), get("/")),
        (true, "default:allow-authenticated".into())
    );
    assert_eq!(
        decide(&authz, None, get("/")),
        (false, "default:allow-authenticated".into())
    );
}

#[test]
fn defaults_without_policies() {
    let empty = server(vec![]);
    let (all, _) = compile(&empty, DefaultPolicy::AllowAll);
    assert!(decide(&all, None, get("/")).0);
    assert_eq!(all.tls_mode(), TlsMode::Permissive);
    let (authn, _) = compile(&empty, DefaultPolicy::AllowAuthenticated);
    assert!(decide(&authn, Some(OPS), get("/")).0);
    assert!(!decide(&authn, None, get("/")).0);
    assert_eq!(authn.tls_mode(), TlsMode::Strict);
    let (deny, _) = compile(&empty, DefaultPolicy::Deny);
    assert_eq!(
        decide(&deny, Some(OPS), get("/")),
        (false, "default:deny".into())
    );
    // The placeholder before the controller answers is the default alone.
    let m = Metrics::new();
    let placeholder = ServerAuthz::compile(None, DefaultPolicy::AllowAll, &m);
    assert!(!placeholder.received && decide(&placeholder, None, get("/")).0);
}

#[test]
fn empty_rule_sets() {
    // An allow policy without rules allows nothing…
    let p = server(vec![policy("allow-nothing", pb::Action::Allow, vec![])]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(!decide(&authz, Some(PAYMENTS), get("/")).0);
    // …a deny policy without rules denies nothing…
    let p = server(vec![policy("deny-nothing", pb::Action::Deny, vec![])]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(decide(&authz, Some(PAYMENTS), get("/")).0);
    // …and a rule with neither `from` nor `to` matches every caller,
    // plaintext too (on a permissive port).
    let mut p = server(vec![policy(
        "allow-any",
        pb::Action::Allow,
        vec![rule(vec![], vec![])],
    )]);
    p.tls_mode = pb::TlsMode::Permissive.into();
    let (authz, _) = compile(&p, DefaultPolicy::Deny);
    assert!(decide(&authz, None, get("/x")).0);
    // An empty source means any authenticated caller.
    let p = server(vec![policy(
        "authenticated",
        pb::Action::Allow,
        vec![rule(vec![PbSrc::default()], vec![])],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(decide(&authz, Some(OPS), get("/")).0);
    assert!(!decide(&authz, None, get("/")).0);
}

#[test]
fn identity_wildcards() {
    assert!(glob("spiffe://cluster.local/ns/shop/*", PAYMENTS));
    assert!(!glob("spiffe://cluster.local/ns/shop/*", OPS));
    assert!(glob("*", OPS));
    assert!(glob("spiffe://*/ns/ops/sa/*", OPS));
    assert!(glob("spiffe://cluster.local/ns/*/sa/admin", OPS));
    assert!(!glob("spiffe://cluster.local/ns/*/sa/admin", PAYMENTS));
    assert!(glob(PAYMENTS, PAYMENTS));
    assert!(!glob(PAYMENTS, ORDERS));
    assert!(!glob("a*a", "a"));
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b*c", "axxcyyb"));
    let p = server(vec![policy(
        "shop",
        pb::Action::Allow,
        vec![rule(
            vec![ids(&["spiffe://cluster.local/ns/shop/*"])],
            vec![],
        )],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(decide(&authz, Some(ORDERS), get("/")).0);
    assert!(!decide(&authz, Some(OPS), get("/")).0);
}

#[test]
fn namespaces_service_accounts_networks_and_unauthenticated() {
    let src = |f: fn(&mut PbSrc)| {
        let mut s = PbSrc::default();
        f(&mut s);
        let p = server(vec![policy(
            "p",
            pb::Action::Allow,
            vec![rule(vec![s], vec![])],
        )]);
        compile(&p, DefaultPolicy::AllowAll).0
    };
    let a = src(|s| s.service_accounts = vec!["shop/payments".into()]);
    assert!(decide(&a, Some(PAYMENTS), get("/")).0);
    assert!(!decide(&a, Some(ORDERS), get("/")).0);
    let a = src(|s| s.namespaces = vec!["ops".into()]);
    assert!(decide(&a, Some(OPS), get("/")).0);
    assert!(!decide(&a, Some(ORDERS), get("/")).0);
    let a = src(|s| s.namespaces = vec!["*".into()]);
    assert!(decide(&a, Some(OPS), get("/")).0 && !decide(&a, None, get("/")).0);
    // Networks alone still need an identity; with `unauthenticated` anyone there.
    let a = src(|s| s.networks = vec!["198.18.0.0/15".into()]);
    assert!(decide(&a, Some(OPS), get("/")).0);
    assert!(!decide(&a, None, get("/")).0);
    let a = src(|s| {
        s.networks = vec!["198.18.0.0/15".into()];
        s.unauthenticated = true;
    });
    assert!(decide(&a, None, get("/")).0);
    let a = src(|s| {
        s.networks = vec!["10.0.0.0/8".into()];
        s.unauthenticated = true;
    });
    assert!(!decide(&a, None, get("/")).0);
    // Fields of one source must all match.
    let a = src(|s| {
        s.namespaces = vec!["shop".into()];
        s.identities = vec!["*/sa/orders".into()];
    });
    assert!(decide(&a, Some(ORDERS), get("/")).0);
    assert!(!decide(&a, Some(PAYMENTS), get("/")).0);
    // An invalid network narrows the rule to nobody.
    let a = src(|s| s.networks = vec!["10.0.0.0/99".into()]);
    assert!(!decide(&a, Some(OPS), get("/")).0);
}

fn op(paths: Vec<Kind>, methods: &[&str], ports: &[u32]) -> PbOp {
    PbOp {
        paths: paths
            .into_iter()
            .map(|k| PathMatch { kind: Some(k) })
            .collect(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        ports: ports.to_vec(),
    }
}

#[test]
fn paths_methods_and_ports() {
    let p = server(vec![policy(
        "orders-read",
        pb::Action::Allow,
        vec![rule(
            vec![ids(&[ORDERS])],
            vec![
                op(vec![Kind::Exact("/balance".into())], &["GET"], &[]),
                op(vec![Kind::Prefix("/api/".into())], &[], &[8080]),
            ],
        )],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(decide(&authz, Some(ORDERS), get("/balance")).0);
    let post = Call {
        port: 8080,
        http: Some((&http::Method::POST, "/transfer")),
    };
    assert!(!decide(&authz, Some(ORDERS), post).0);
    let post_balance = Call {
        port: 8080,
        http: Some((&http::Method::POST, "/balance")),
    };
    assert!(!decide(&authz, Some(ORDERS), post_balance).0);
    assert!(!decide(&authz, Some(ORDERS), get("/balance/x")).0);
    assert!(decide(&authz, Some(ORDERS), get("/api")).0);
    assert!(decide(&authz, Some(ORDERS), get("/api/v1/x")).0);
    assert!(!decide(&authz, Some(ORDERS), get("/apix")).0);
    let other_port = Call {
        port: 9090,
        http: Some((&http::Method::GET, "/api/x")),
    };
    assert!(!decide(&authz, Some(ORDERS), other_port).0);
}

#[test]
fn opaque_connections_fail_closed_on_http_conditions() {
    // Allow rules with paths or methods never match a TCP connection…
    let p = server(vec![policy(
        "reads",
        pb::Action::Allow,
        vec![rule(vec![ids(&[ORDERS])], vec![op(vec![], &["GET"], &[])])],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(!decide(&authz, Some(ORDERS), opaque()).0);
    // …while deny rules ignore them.
    let p = server(vec![policy(
        "no-writes",
        pb::Action::Deny,
        vec![rule(vec![ids(&[ORDERS])], vec![op(vec![], &["POST"], &[])])],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(!decide(&authz, Some(ORDERS), opaque()).0);
    assert!(decide(&authz, Some(ORDERS), get("/")).0);
    assert!(decide(&authz, Some(PAYMENTS), opaque()).0);
}

#[test]
fn audit_policies_count_without_deciding() {
    let p = server(vec![
        policy(
            "watch-orders",
            pb::Action::Audit,
            vec![rule(vec![ids(&[ORDERS])], vec![])],
        ),
        policy(
            "everyone",
            pb::Action::Allow,
            vec![rule(vec![ids(&["*"])], vec![])],
        ),
    ]);
    let (authz, metrics) = compile(&p, DefaultPolicy::Deny);
    assert_eq!(
        decide(&authz, Some(ORDERS), get("/")),
        (true, "everyone".into())
    );
    assert!(!decide(&authz, None, get("/")).0);
    let text = metrics.encode();
    assert!(text.contains("mesh_authz_total{decision=\"audit\",policy=\"watch-orders\"} 1"));
}

#[test]
fn tls_mode_from_the_policy_or_the_default() {
    let mut p = server(vec![]);
    p.tls_mode = pb::TlsMode::Strict.into();
    p.tls_mode_source = "ledger-strict".into();
    let (authz, metrics) = compile(&p, DefaultPolicy::AllowAll);
    assert_eq!(authz.tls_mode(), TlsMode::Strict);
    assert_eq!(authz.refuse_plaintext().0.as_ref(), "ledger-strict");
    assert!(metrics
        .encode()
        .contains("mesh_authz_total{decision=\"deny\",policy=\"ledger-strict\"} 1"));
    p.tls_mode = pb::TlsMode::Permissive.into();
    assert_eq!(
        compile(&p, DefaultPolicy::Deny).0.tls_mode(),
        TlsMode::Permissive
    );
    assert_eq!(
        DefaultPolicy::parse("allow-authenticated"),
        Some(DefaultPolicy::AllowAuthenticated)
    );
    assert_eq!(DefaultPolicy::parse("allow-some"), None);
}

#[test]
fn plaintext_callers_are_denied_on_strict_ports_whatever_the_policies() {
    let mut p = server(vec![policy(
        "anyone",
        pb::Action::Allow,
        vec![rule(vec![], vec![])],
    )]);
    p.tls_mode = pb::TlsMode::Strict.into();
    p.tls_mode_source = "shop/strict".into();
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert_eq!(
        decide(&authz, None, get("/")),
        (false, "shop/strict".into())
    );
    assert!(decide(&authz, Some(OPS), get("/")).0);
}

#[test]
fn audits_are_counted_even_when_a_deny_decides() {
    let p = server(vec![
        policy(
            "a-deny",
            pb::Action::Deny,
            vec![rule(vec![ids(&[ORDERS])], vec![])],
        ),
        policy(
            "z-audit",
            pb::Action::Audit,
            vec![rule(vec![ids(&[ORDERS])], vec![])],
        ),
    ]);
    let (authz, metrics) = compile(&p, DefaultPolicy::AllowAll);
    assert!(!decide(&authz, Some(ORDERS), get("/")).0);
    assert!(metrics
        .encode()
        .contains("mesh_authz_total{decision=\"audit\",policy=\"z-audit\"} 1"));
}

#[test]
fn recheck_counts_only_denials() {
    let p = server(vec![policy(
        "only-payments",
        pb::Action::Allow,
        vec![rule(vec![ids(&[PAYMENTS])], vec![])],
    )]);
    let (authz, metrics) = compile(&p, DefaultPolicy::AllowAll);
    assert!(authz.recheck(&caller(Some(PAYMENTS)), &opaque()).allowed);
    assert!(!authz.recheck(&caller(Some(ORDERS)), &opaque()).allowed);
    let text = metrics.encode();
    assert!(
        !text.contains("decision=\"allow\",policy=\"only-payments\"} 1"),
        "{text}"
    );
    assert!(text.contains("mesh_authz_total{decision=\"deny\",policy=\"only-payments\"} 1"));
}

#[test]
fn entries_that_do_not_compile_fail_closed() {
    let bad_method = || op(vec![], &["GE T"], &[]);
    // An allow rule with a bad method allows nobody…
    let p = server(vec![policy(
        "reads",
        pb::Action::Allow,
        vec![rule(vec![ids(&[ORDERS])], vec![bad_method()])],
    )]);
    assert!(
        !decide(
            &compile(&p, DefaultPolicy::AllowAll).0,
            Some(ORDERS),
            get("/")
        )
        .0
    );
    // …and a deny rule with one denies whoever its sources name.
    let p = server(vec![policy(
        "no-orders",
        pb::Action::Deny,
        vec![rule(vec![ids(&[ORDERS])], vec![bad_method()])],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(!decide(&authz, Some(ORDERS), get("/")).0);
    assert!(decide(&authz, Some(PAYMENTS), get("/")).0);
    // A deny source with a bad network matches everyone.
    let p = server(vec![policy(
        "no-net",
        pb::Action::Deny,
        vec![rule(
            vec![PbSrc {
                networks: vec!["10.0.0.0/99".into()],
                ..Default::default()
            }],
            vec![],
        )],
    )]);
    assert!(!decide(&compile(&p, DefaultPolicy::AllowAll).0, Some(OPS), get("/")).0);
}

#[test]
fn namespace_rules_need_a_well_formed_identity() {
    let p = server(vec![policy(
        "shop",
        pb::Action::Allow,
        vec![rule(
            vec![PbSrc {
                namespaces: vec!["shop".into()],
                ..Default::default()
            }],
            vec![],
        )],
    )]);
    let (authz, _) = compile(&p, DefaultPolicy::AllowAll);
    assert!(decide(&authz, Some(ORDERS), get("/")).0);
    for odd in [
        "spiffe://cluster.local/x/ns/shop/sa/y",
        "spiffe://cluster.local/ns/shop/sa/a/b",
        "spiffe:///ns/shop/sa/a",
    ] {
        assert!(!decide(&authz, Some(odd), get("/")).0, "{odd}");
    }
}
