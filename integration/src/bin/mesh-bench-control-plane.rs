//! `make bench-control-plane`: loads the real controller (release build) through a fake
//! Kubernetes API with Services, pods and EndpointSlices, holds three streams per
//! simulated proxy, applies endpoint changes and prints how fast they reach the streams
//! and what the controller spent. Options: `--services N --pods-per-service N
//! --namespaces N --proxies N --single N --burst N --burst-window-ms N`.

use std::time::Duration;

use mesh_integration::control_plane::{objects::Shape, run, Config};

fn main() -> anyhow::Result<()> {
    let mut cfg = Config {
        shape: Shape {
            namespaces: 10,
            services: 1000,
            pods_per_service: 10,
        },
        proxies: 2000,
        single: 20,
        burst: 1000,
        burst_window: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("{} needs a value", pair[0]);
        };
        let n: usize = value
            .parse()
            .map_err(|_| anyhow::anyhow!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--services" => cfg.shape.services = n,
            "--pods-per-service" => cfg.shape.pods_per_service = n,
            "--namespaces" => cfg.shape.namespaces = n,
            "--proxies" => cfg.proxies = n,
            "--single" => cfg.single = n,
            "--burst" => cfg.burst = n,
            "--burst-window-ms" => cfg.burst_window = Duration::from_millis(n as u64),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(cfg))?;
    println!("{}", report.render());
    Ok(())
}
