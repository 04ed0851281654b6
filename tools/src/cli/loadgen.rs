//! `localdr loadgen`: synthetic load for drills. HTTP profiles (`steady`, `ramp` — the
//! seed's 5 → 10 → 20 → 50 → 100 requests/s — and `spike`) with a latency and status
//! summary; or `--queue-dir DIR --files N` to drop N request files for a queue balancer
//! (each written to a temporary name and renamed, so a consumer never sees half a file).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/.
    #[arg(long, required_unless_present = "queue_dir")]
    pub url: Option<String>,
    /// Load shape.
    #[arg(long, value_enum, default_value_t = Profile::Steady)]
    pub profile: Profile,
    /// Requests per second (steady; the base rate of spike; the top of ramp).
    #[arg(long, default_value_t = 50)]
    pub rps: u32,
    /// How long to run.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Drop request files into this directory instead of sending HTTP requests.
    #[arg(long, value_name = "DIR", conflicts_with = "url")]
    pub queue_dir: Option<PathBuf>,
    /// How many request files to drop.
    #[arg(long, default_value_t = 10)]
    pub files: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Profile {
    Steady,
    Ramp,
    Spike,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub achieved_rps: f64,
    pub latency_ms: BTreeMap<String, f64>,
}

/// Requests per second at `t` seconds into a run of `total` seconds.
pub fn rate_at(profile: Profile, rps: u32, t: f64, total: f64) -> f64 {
    let rps = rps as f64;
    match profile {
        Profile::Steady => rps,
        Profile::Ramp => {
            // The seed's stages, scaled so the last one is `rps`.
            let stages = [5.0, 10.0, 20.0, 50.0, 100.0];
            let i = ((t / total) * stages.len() as f64).floor() as usize;
            stages[i.min(stages.len() - 1)] * rps / 100.0
        }
        Profile::Spike => {
            let f = t / total;
            if (0.4..0.6).contains(&f) {
                rps * 10.0
            } else {
                rps
            }
        }
    }
}

pub fn run(a: LoadgenArgs) -> Result<i32> {
    if let Some(dir) = &a.queue_dir {
        return drop_files(dir, a.files, a.json);
    }
    let url: hyper::Uri = a
        .url
        .as_deref()
        .expect("clap requires --url")
        .parse()
        .context("--url is not a valid URL")?;
    if url.scheme_str() != Some("http") {
        bail!("--url must be an http:// URL");
    }
    let total =
        crate::duration::parse(&a.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let s = rt.block_on(http_load(url, a.profile, a.rps, total, a.concurrency));
    if a.json {
        super::print_json(&s)?;
    } else {
        println!(
            "{} requests in {:.1} s ({:.1}/s): {} ok, {} failed",
            s.requests, s.seconds, s.achieved_rps, s.ok, s.failed
        );
        let st: Vec<String> = s
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("statuses: {}", st.join(", "));
        if !s.errors.is_empty() {
            let er: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("errors: {}", er.join(", "));
        }
        let l: Vec<String> = ["p50", "p90", "p99", "max"]
            .iter()
            .map(|k| format!("{k} {:.2} ms", s.latency_ms.get(*k).copied().unwrap_or(0.0)))
            .collect();
        println!("latency: {}", l.join(", "));
    }
    Ok(if s.failed == 0 { 0 } else { 1 })
}

/// One request's outcome (status or error) and latency in ms.
type Sample = (Result<u16, String>, f64);

async fn http_load(
    url: hyper::Uri,
    profile: Profile,
    rps: u32,
    total: Duration,
    conc: usize,
) -> Summary {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conc)
        .build_http();
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let results: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let total_s = total.as_secs_f64();
    let mut next = 0.0f64;
    let mut tasks = Vec::new();
    while next < total_s {
        let at = start + Duration::from_secs_f64(next);
        tokio::time::sleep_until(at.into()).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let (client, url, results) = (client.clone(), url.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let req = hyper::Request::get(url)
                .body(Empty::new())
                .expect("request");
            let r = match client.request(req).await {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    match resp.into_body().collect().await {
                        Ok(_) => Ok(code),
                        Err(e) => Err(format!("body: {e}")),
                    }
                }
                Err(e) => Err(if e.is_connect() {
                    "connect".to_string()
                } else {
                    format!("{e}")
                }),
            };
            results
                .lock()
                .expect("results")
                .push((r, t.elapsed().as_secs_f64() * 1000.0));
            drop(permit);
        }));
        let rate = rate_at(profile, rps, next, total_s).max(0.1);
        next += 1.0 / rate;
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().expect("results"));
    let mut s = Summary {
        seconds,
        ..Default::default()
    };
    let mut lat: Vec<f64> = Vec::with_capacity(results.len());
    for (r, ms) in results {
        s.requests += 1;
        lat.push(ms);
        match r {
            Ok(code) => {
                *s.statuses.entry(code.to_string()).or_default() += 1;
                if (200..400).contains(&code) {
                    s.ok += 1;
                } else {
                    s.failed += 1;
                }
            }
            Err(e) => {
                s.failed += 1;
                *s.errors.entry(e).or_default() += 1;
            }
        }
    }
    s.achieved_rps = s.requests as f64 / seconds.max(1e-9);
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    for (k, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        s.latency_ms.insert(k.into(), q(p));
    }
    s
}

fn drop_files(dir: &std::path::Path, n: u32, json: bool) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("req_{stamp}_{i:06}.json");
        let body = serde_json::json!({
            "id": format!("{stamp}-{i}"),
            "created_at": chrono::Utc::now().to_rfc3339(),
            "payload": format!("request {i}"),
        });
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&body)?)?;
        std::fs::rename(&tmp, dir.join(&name))?;
        names.push(name);
    }
    if json {
        super::print_json(&serde_json::json!({"dir": dir, "files": names}))?;
    } else {
        println!("dropped {n} request files into {}", dir.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_follows_the_seed_stages() {
        let r: Vec<f64> = (0..5)
            .map(|i| rate_at(Profile::Ramp, 100, i as f64 * 2.0 + 0.5, 10.0))
            .collect();
        assert_eq!(r, [5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(rate_at(Profile::Spike, 10, 5.0, 10.0), 100.0);
        assert_eq!(rate_at(Profile::Spike, 10, 1.0, 10.0), 10.0);
    }
}
