//! A small HTTP worker for the end-to-end tests: answers `GET /` with its port and pid,
//! `/health` with 200, `/headers` with the X-Forwarded-For and X-Request-ID it got,
//! `/sleep?ms=N` after N ms (to hold a request in flight), and with
//! `--crash` exits 3 at once (a replica that crashes at start). HTTP/1.1 keep-alive, one
//! thread per connection, std only.
//!
//! `process [--ledger F] [--fail-every N] [--sleep-ms MS] FILE` is a queue command: it
//! works MS ms, then fails (exit 1) when the number at the end of FILE's name is a
//! multiple of N, else appends `<name> <worker>` to the ledger (fsynced) and exits 0.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("process") {
        process(&args[2..]);
    }
    if args.iter().any(|a| a == "--crash") {
        eprintln!("worker: crashing at start as asked");
        std::process::exit(3);
    }
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .expect("--port N or PORT");
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("worker: cannot bind 127.0.0.1:{port}: {e}");
        std::process::exit(2)
    });
    eprintln!("worker: listening on 127.0.0.1:{port}");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || serve(s, port));
    }
}

fn serve(s: TcpStream, port: u16) {
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut close = line.contains("HTTP/1.0");
        let mut echoed = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection: close") {
                close = true;
            }
            if lower.starts_with("x-forwarded-for:") || lower.starts_with("x-request-id:") {
                echoed.push_str(h.trim_end());
                echoed.push('\n');
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        if let Some(ms) = path.strip_prefix("/sleep?ms=") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(100)));
        }
        let body = if path == "/headers" {
            echoed
        } else {
            format!("port={port} pid={}\n", std::process::id())
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn process(args: &[String]) -> ! {
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let file = std::path::PathBuf::from(args.last().expect("FILE"));
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let ms: u64 = opt("--sleep-ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    if std::fs::read(&file).is_err() {
        eprintln!("worker: cannot read {}", file.display());
        std::process::exit(2);
    }
    let digits: String = name
        .trim_end_matches(".json")
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let n: u64 = digits.parse().unwrap_or(1);
    if let Some(every) = opt("--fail-every").and_then(|v| v.parse::<u64>().ok()) {
        if n.is_multiple_of(every) {
            eprintln!("worker: item {n} fails, as every {every}th does");
            std::process::exit(1);
        }
    }
    if let Some(ledger) = opt("--ledger") {
        let worker = std::env::var("LOCALDR_WORKER").unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ledger)
            .expect("ledger");
        f.write_all(format!("{name} {worker}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .expect("ledger write");
    }
    std::process::exit(0)
}
