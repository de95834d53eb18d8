//! The dashboard's live tap: opened on the proxies when the page asks for
//! events, closed when nobody has asked for a while; the latest events kept.

use crate::tap::{client::Source, render, select};
use serde_json::{json, Value};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Events kept for the page.
const KEEP: usize = 100;
/// A failed tap is opened again after this.
const RETRY: Duration = Duration::from_secs(10);
/// A tap nobody reads is closed after this.
const UNUSED: Duration = Duration::from_secs(30);

/// The tap of the page.
#[derive(Default)]
pub struct TapView {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The workload tapped (`None`: every proxy of the namespace).
    workload: Option<String>,
    running: Option<tokio::task::JoinHandle<()>>,
    events: VecDeque<Value>,
    error: Option<String>,
    last_read: Option<Instant>,
    started: Option<Instant>,
}

impl TapView {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The events so far for `workload` (`ns/name`); starts (or switches) the tap.
    pub fn read(
        self: &Arc<Self>,
        source: &Source,
        namespace: Option<&str>,
        workload: Option<String>,
    ) -> Value {
        let mut s = self.lock();
        s.last_read = Some(Instant::now());
        let finished = s.running.as_ref().is_none_or(|h| h.is_finished());
        // A tap that failed is tried again only after a while.
        let backing_off = s.error.is_some() && s.started.is_some_and(|t| t.elapsed() < RETRY);
        if s.workload != workload || (finished && !backing_off) {
            if let Some(h) = s.running.take() {
                h.abort();
            }
            if s.workload != workload {
                s.events.clear();
            }
            s.workload = workload.clone();
            s.error = None;
            s.started = Some(Instant::now());
            s.running = Some(tokio::spawn(run(
                self.clone(),
                source.clone(),
                namespace.map(String::from),
                workload,
            )));
        }
        json!({
            "active": s.running.as_ref().is_some_and(|h| !h.is_finished()),
            "error": s.error,
            "events": s.events.iter().collect::<Vec<_>>(),
        })
    }
}

/// Taps until nobody reads for [`UNUSED`].
async fn run(
    view: Arc<TapView>,
    source: Source,
    namespace: Option<String>,
    workload: Option<String>,
) {
    let ns = namespace.as_deref().unwrap_or("default");
    let resource = match (&workload, &namespace) {
        (Some(w), _) => {
            let (ns, name) = w.split_once('/').unwrap_or((ns, w));
            (format!("deploy/{name}"), ns.to_string())
        }
        (None, Some(ns)) => (format!("ns/{ns}"), ns.clone()),
        // Every proxy of every namespace.
        (None, None) => ("ns/*".to_string(), ns.to_string()),
    };
    let plan = select::plan(&select::Spec {
        resource: resource.0,
        namespace: resource.1,
        ..select::Spec::default()
    });
    let started = match plan {
        Ok(p) => crate::tap::start(&p, &source, 20, 0).await,
        Err(e) => Err(e),
    };
    let (mut events, mut ends, n) = match started {
        Ok(s) => s,
        Err(e) => {
            view.lock().error = Some(format!("{e:#}"));
            return;
        }
    };
    let mut open = n;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some((proxy, e)) = events.recv() => {
                let mut s = view.lock();
                s.events.push_back(render::to_json(&proxy, &e));
                while s.events.len() > KEEP {
                    s.events.pop_front();
                }
            }
            Some((proxy, r)) = ends.recv() => {
                open -= 1;
                if let Err(e) = r {
                    view.lock().error = Some(format!("{proxy}: {e}"));
                }
                if open == 0 {
                    return;
                }
            }
            _ = check.tick() => {
                if view.lock().last_read.is_none_or(|t| t.elapsed() > UNUSED) {
                    return;
                }
            }
        }
    }
}
