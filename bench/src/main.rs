//! `ociregistry-bench`: in one run, starts a real upstream (`docker-registry`) seeded with
//! generated images, our `ociregistry`, CNCF distribution in proxy mode (the peer), and nginx
//! with sendfile (the ceiling), runs the scenarios of issue 4 and prints one markdown table
//! of medians (min–max) and ratios, with each goal marked met or not. Scenario 7 runs three
//! `ociregistry` replicas on one bucket of a real `s3s-fs` (issue 12).
//!
//! `ociregistry-bench [--quick] [--only 1,...,7] [--out FILE] [--ociregistry BIN] [--work-dir DIR]`
//! (`scripts/bench.sh` installs the tools, builds, and runs it.)

mod client;
mod procs;
mod wrk;

use client::{Image, OCI_MANIFEST};
use procs::{Nginx, Ours, Proc, Registry, S3Fs};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type R<T> = Result<T, String>;

const MIB: u64 = 1 << 20;
const OURS: usize = 0;
const PEER: usize = 1;
const BASE: usize = 2;
const PROXIES: [usize; 2] = [OURS, PEER];
/// Parallel connections per pulling client.
const CONNS: usize = 4;

#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    layers: usize,
    layer_size: u64,
    big_size: u64,
    small_size: u64,
    clients: usize,
    reps_cold: usize,
    reps_many: usize,
    reps_big: usize,
    warm_downloads: usize,
    wrk_secs: u64,
    wrk_reps: usize,
    /// Runs of scenario 7 (each: a fresh bucket and fresh replicas, twice).
    reps_replicas: usize,
    time_limit: Duration,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            quick: false,
            layers: 4,
            layer_size: 64 * MIB,
            big_size: 1024 * MIB,
            small_size: 20 * 1024,
            clients: 20,
            reps_cold: 5,
            reps_many: 3,
            reps_big: 2,
            warm_downloads: 7,
            wrk_secs: 10,
            wrk_reps: 3,
            reps_replicas: 3,
            time_limit: Duration::from_secs(25 * 60),
        }
    }

    fn quick() -> Plan {
        Plan {
            quick: true,
            layer_size: 8 * MIB,
            big_size: 128 * MIB,
            reps_cold: 2,
            reps_many: 1,
            reps_big: 1,
            warm_downloads: 3,
            wrk_secs: 2,
            wrk_reps: 1,
            reps_replicas: 1,
            time_limit: Duration::from_secs(8 * 60),
            ..Plan::full()
        }
    }
}

#[derive(Debug)]
struct Args {
    plan: Plan,
    out: PathBuf,
    bin: PathBuf,
    work_parent: PathBuf,
    command: String,
    /// Scenarios to run (1..=7); all by default.
    only: Vec<u32>,
}

impl Args {
    fn wants(&self, scenario: u32) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }

    /// Whether any of the scenarios of issue 4 (1..=6, the main table) runs.
    fn wants_main(&self) -> bool {
        (1..=6).any(|n| self.wants(n))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: ociregistry-bench [--quick] [--only 1,2,3,4,5,6,7] [--out FILE] [--ociregistry BIN] [--work-dir DIR] [--command TEXT]\n\
         --only runs some scenarios (e.g. to profile one: `perf record -g -- ociregistry-bench --only 4`;\n\
         the server's threads are `tokio-runtime-w`, the bench's own `bench-worker`)"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut quick = false;
    let mut out = None;
    let mut bin = None;
    let mut work_parent = std::env::temp_dir();
    let mut command = None;
    let mut only = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = Some(PathBuf::from(it.next().unwrap_or_else(|| usage()))),
            "--ociregistry" => bin = Some(PathBuf::from(it.next().unwrap_or_else(|| usage()))),
            "--work-dir" => work_parent = PathBuf::from(it.next().unwrap_or_else(|| usage())),
            "--command" => command = Some(it.next().unwrap_or_else(|| usage())),
            "--only" => {
                for n in it.next().unwrap_or_else(|| usage()).split(',') {
                    match n.trim().parse::<u32>() {
                        Ok(n @ 1..=7) => only.push(n),
                        _ => usage(),
                    }
                }
            }
            _ => usage(),
        }
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    Args {
        plan: if quick { Plan::quick() } else { Plan::full() },
        out: out.unwrap_or_else(|| {
            exe_dir
                .parent()
                .map(|t| t.join("bench/results.md"))
                .unwrap_or_else(|| PathBuf::from("bench-results.md"))
        }),
        bin: bin.unwrap_or_else(|| exe_dir.join("ociregistry")),
        work_parent,
        command: command.unwrap_or_else(|| {
            if quick {
                "scripts/bench.sh --quick".into()
            } else {
                "scripts/bench.sh".into()
            }
        }),
        only,
    }
}

/// Samples of one measurement.
#[derive(Debug, Clone, Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn all_eq(&self, x: f64) -> bool {
        !self.0.is_empty() && self.0.iter().all(|v| (v - x).abs() < 1e-9)
    }

    fn cell(&self, prec: usize) -> String {
        if self.0.is_empty() {
            return "–".into();
        }
        let (m, lo, hi) = (self.median(), self.min(), self.max());
        if self.0.len() == 1 || (hi - lo).abs() < 1e-12 {
            format!("{m:.prec$}")
        } else {
            format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})")
        }
    }
}

fn ratio(a: &Series, b: &Series) -> f64 {
    a.median() / b.median()
}

fn runs(n: usize) -> String {
    if n == 1 {
        "1 run".into()
    } else {
        format!("{n} runs")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "–".into()
    }
}

#[derive(Debug, Default)]
struct Results {
    cold_s: [Series; 3],
    cold_gets: [Series; 2],
    cold_upreqs: [Series; 2],
    cold_cpu: [Series; 2],
    /// CPU of the bench's client threads during each cold pull (direct too).
    cold_client_cpu: [Series; 3],
    /// CPU of the upstream docker-registry during each cold pull (direct too).
    cold_up_cpu: [Series; 3],
    many_s: [Series; 3],
    many_gets: [Series; 2],
    many_max_per_blob: [Series; 2],
    many_rss: [Series; 2],
    many_cpu: [Series; 2],
    warm_mbs: [Series; 3],
    man_rps: [Series; 3],
    man_p50: [Series; 3],
    man_p99: [Series; 3],
    man_up_per_req: [Series; 2],
    man_cpu_us_per_req: [Series; 2],
    small_rps: [Series; 3],
    small_p50: [Series; 3],
    small_p99: [Series; 3],
    small_up_per_req: [Series; 2],
    small_cpu_us_per_req: [Series; 2],
    big_s: [Series; 3],
    big_rss: [Series; 2],
    big_gets: [Series; 2],
    big_cpu: [Series; 2],
    replicas: ReplicaResults,
    notes: Vec<String>,
}

/// Scenario 7: three replicas (A, B, C) on one bucket. Arrays are indexed by replica.
#[derive(Debug, Default)]
struct ReplicaResults {
    /// Cold pull through A, then (bucket-warm, local-cold) B, then C.
    cold_s: [Series; 3],
    direct_s: Series,
    /// The same cold and warm pull through a filesystem `ociregistry` (no bucket).
    fs_cold_s: Series,
    fs_warm_s: Series,
    fs_rss: Series,
    cold_gets: [Series; 3],
    cold_gets_total: Series,
    cold_reqs: [Series; 3],
    cold_reqs_total: Series,
    /// A second pull through each replica (its local copy).
    warm_s: [Series; 3],
    /// Peak RSS and CPU of each replica over its cold and warm pull.
    rss: [Series; 3],
    cpu: [Series; 3],
    s3_rss: Series,
    s3_cpu: Series,
    /// Three clients at once, one per fresh replica, cold.
    par_s: Series,
    par_each_s: [Series; 3],
    par_direct_s: Series,
    par_gets: Series,
    par_max_per_blob: Series,
    /// Clients (of three) whose pull failed.
    par_failed: Series,
    par_rss: [Series; 3],
}

/// A proxy under test.
#[derive(Debug)]
enum Proxy {
    Ours(Ours),
    Peer(Registry),
}

impl Proxy {
    fn url(&self) -> String {
        match self {
            Proxy::Ours(o) => o.url(),
            Proxy::Peer(p) => p.url(),
        }
    }

    fn proc(&self) -> &Proc {
        match self {
            Proxy::Ours(o) => &o.proc,
            Proxy::Peer(p) => &p.proc,
        }
    }
}

struct Bench<'a> {
    plan: &'a Plan,
    work: &'a Path,
    bin: &'a Path,
    rt: &'a tokio::runtime::Runtime,
    up: Registry,
    nginx: Nginx,
    pull_img: Image,
    big_img: Image,
    small_img: Image,
    started: Instant,
    res: Results,
}

/// Waits (at most 30 s) until `p`'s CPU time stops moving (see [`Bench::settle`]).
fn settle_proc(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = p.cpu_secs().unwrap_or(0.0);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = p.cpu_secs().unwrap_or(0.0);
        if now - last < 0.015 || Instant::now() >= deadline {
            return;
        }
        last = now;
    }
}

/// Upstream blob GETs among `lines`: how many, and the most of any one blob.
fn blob_gets(lines: &[procs::AccessLine]) -> (usize, usize) {
    let gets: Vec<&str> = lines
        .iter()
        .filter(|l| l.is_blob_get())
        .map(|l| l.uri.as_str())
        .collect();
    let max_per_blob = gets
        .iter()
        .map(|u| gets.iter().filter(|v| *v == u).count())
        .max()
        .unwrap_or(0);
    (gets.len(), max_per_blob)
}

fn replica_name(i: usize) -> &'static str {
    ["A", "B", "C"].get(i).copied().unwrap_or("?")
}

fn name(w: usize) -> &'static str {
    match w {
        OURS => "ociregistry",
        PEER => "distribution",
        _ => "baseline",
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Bench<'_> {
    fn log(&self, msg: &str) {
        eprintln!(
            "[bench {:6.1}s] {msg}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn start_proxy(&self, w: usize) -> R<Proxy> {
        Ok(match w {
            OURS => Proxy::Ours(Ours::start(self.work, self.bin, &self.up.host())?),
            _ => Proxy::Peer(Registry::start(
                self.work,
                "distribution-proxy",
                Some(&self.up.url()),
                false,
            )?),
        })
    }

    /// Waits (at most 30 s) until the proxy's CPU time stops moving: background fetches
    /// that outlive the client's pull then show in the upstream's access log.
    fn settle(&self, p: &Proxy) {
        settle_proc(p.proc());
    }

    fn pull_once(&self, base: &str, img: &Image) -> R<Duration> {
        let t0 = Instant::now();
        self.rt.block_on(async {
            let c = client::new_client(CONNS)?;
            client::pull(&c, base, img, CONNS).await
        })?;
        Ok(t0.elapsed())
    }

    /// [`Self::pull_once`], also recording the CPU the bench's client and the upstream
    /// spent on it (for the CPU budget of scenario 1) under `who`.
    fn pull_once_counted(&mut self, who: usize, base: &str, img: &Image) -> R<Duration> {
        let (client0, up0) = (procs::own_cpu_secs()?, self.up.proc.cpu_secs()?);
        let took = self.pull_once(base, img)?;
        self.res.cold_client_cpu[who].push(procs::own_cpu_secs()? - client0);
        self.res.cold_up_cpu[who].push(self.up.proc.cpu_secs()? - up0);
        Ok(took)
    }

    /// One cold pull (fresh proxy): time, upstream blob GETs and requests, CPU, peak RSS.
    fn cold_pull_via(&mut self, w: usize, img: &Image) -> R<(f64, usize, usize, f64, f64)> {
        let p = self.start_proxy(w)?;
        let a = self.up.sync_log()?;
        let took = self.pull_once(&p.url(), img)?;
        self.settle(&p);
        let b = self.up.sync_log()?;
        let lines = self.up.log_between(a, b);
        let gets = lines.iter().filter(|l| l.is_blob_get()).count();
        Ok((
            secs(took),
            gets,
            lines.len(),
            p.proc().cpu_secs()?,
            p.proc().peak_rss_mib()?,
        ))
    }

    /// [`Self::cold_pull_via`] for scenario 1, with the client's and upstream's CPU recorded.
    fn cold_pull_counted(&mut self, w: usize, img: &Image) -> R<(f64, usize, usize, f64)> {
        let p = self.start_proxy(w)?;
        let a = self.up.sync_log()?;
        let up0 = self.up.proc.cpu_secs()?;
        let took = self.pull_once_counted(w, &p.url(), img)?;
        self.settle(&p);
        // The upstream's share includes what the proxy fetched after the client was done.
        if let Some(last) = self.res.cold_up_cpu[w].0.last_mut() {
            *last = self.up.proc.cpu_secs()? - up0;
        }
        let b = self.up.sync_log()?;
        let lines = self.up.log_between(a, b);
        let gets = lines.iter().filter(|l| l.is_blob_get()).count();
        Ok((secs(took), gets, lines.len(), p.proc().cpu_secs()?))
    }

    fn scenario_cold(&mut self) -> R<()> {
        let img = self.pull_img.clone();
        for rep in 0..self.plan.reps_cold {
            let d = self.pull_once_counted(BASE, &self.up.url(), &img)?;
            self.res.cold_s[BASE].push(secs(d));
            for w in PROXIES {
                let (t, gets, reqs, cpu) = self.cold_pull_counted(w, &img)?;
                self.res.cold_s[w].push(t);
                self.res.cold_gets[w].push(gets as f64);
                self.res.cold_upreqs[w].push(reqs as f64);
                self.res.cold_cpu[w].push(cpu);
            }
            self.log(&format!(
                "1. cold pull rep {}: direct {:.2}s, ociregistry {:.2}s, distribution {:.2}s",
                rep + 1,
                secs(d),
                self.res.cold_s[OURS].0.last().copied().unwrap_or(f64::NAN),
                self.res.cold_s[PEER].0.last().copied().unwrap_or(f64::NAN),
            ));
        }
        Ok(())
    }

    fn scenario_many(&mut self) -> R<()> {
        let img = self.pull_img.clone();
        let n = self.plan.clients;
        for rep in 0..self.plan.reps_many {
            let base = self.up.url();
            let d = self
                .rt
                .block_on(client::concurrent_pulls(&base, &img, n, CONNS))?;
            self.res.many_s[BASE].push(secs(d));
            for w in PROXIES {
                let p = self.start_proxy(w)?;
                let a = self.up.sync_log()?;
                let t = self
                    .rt
                    .block_on(client::concurrent_pulls(&p.url(), &img, n, CONNS))?;
                self.settle(&p);
                let b = self.up.sync_log()?;
                let lines = self.up.log_between(a, b);
                let gets: Vec<&str> = lines
                    .iter()
                    .filter(|l| l.is_blob_get())
                    .map(|l| l.uri.as_str())
                    .collect();
                let max_per_blob = gets
                    .iter()
                    .map(|u| gets.iter().filter(|v| *v == u).count())
                    .max()
                    .unwrap_or(0);
                self.res.many_s[w].push(secs(t));
                self.res.many_gets[w].push(gets.len() as f64);
                self.res.many_max_per_blob[w].push(max_per_blob as f64);
                self.res.many_rss[w].push(p.proc().peak_rss_mib()?);
                self.res.many_cpu[w].push(p.proc().cpu_secs()?);
            }
            self.log(&format!(
                "2. {n} concurrent pulls rep {}: direct {:.2}s, ociregistry {:.2}s, distribution {:.2}s",
                rep + 1,
                secs(d),
                self.res.many_s[OURS].0.last().copied().unwrap_or(f64::NAN),
                self.res.many_s[PEER].0.last().copied().unwrap_or(f64::NAN),
            ));
        }
        Ok(())
    }

    fn scenario_big(&mut self) -> R<()> {
        let img = self.big_img.clone();
        for rep in 0..self.plan.reps_big {
            let d = self.pull_once(&self.up.url(), &img)?;
            self.res.big_s[BASE].push(secs(d));
            for w in PROXIES {
                let (t, gets, _, cpu, rss) = self.cold_pull_via(w, &img)?;
                self.res.big_s[w].push(t);
                self.res.big_gets[w].push(gets as f64);
                self.res.big_cpu[w].push(cpu);
                self.res.big_rss[w].push(rss);
            }
            self.log(&format!(
                "6. {} MiB cold pull rep {}: peak RSS ociregistry {:.1} MiB, distribution {:.1} MiB",
                self.plan.big_size / MIB,
                rep + 1,
                self.res.big_rss[OURS].0.last().copied().unwrap_or(f64::NAN),
                self.res.big_rss[PEER].0.last().copied().unwrap_or(f64::NAN),
            ));
        }
        Ok(())
    }

    /// Three `ociregistry serve` replicas on one bucket of a fresh `s3s-fs` (`cluster`: with
    /// the one-fetch-per-blob lease and peer streaming).
    fn start_replicas(&self, cluster: bool) -> R<(S3Fs, [Ours; 3])> {
        let s3 = S3Fs::start(self.work)?;
        let host = self.up.host();
        let start = || Ours::start_on(self.work, self.bin, &host, Some(&s3), cluster);
        let replicas = [start()?, start()?, start()?];
        Ok((s3, replicas))
    }

    /// Scenario 7: three replicas on one bucket. Per run, with a fresh bucket and fresh
    /// replicas: a cold pull through A, then through B and C (bucket-warm, local-cold), then
    /// a second pull through each (its local copy), beside a direct pull and a filesystem
    /// `ociregistry`; then, with another fresh bucket and replicas, three clients pulling the
    /// cold image at once, one per replica.
    fn scenario_replicas(&mut self) -> R<()> {
        let img = self.pull_img.clone();
        for rep in 0..self.plan.reps_replicas {
            let d = self.pull_once(&self.up.url(), &img)?;
            self.res.replicas.direct_s.push(secs(d));
            {
                let fs = Ours::start(self.work, self.bin, &self.up.host())?;
                let cold = self.pull_once(&fs.url(), &img)?;
                settle_proc(&fs.proc);
                let warm = self.pull_once(&fs.url(), &img)?;
                let r = &mut self.res.replicas;
                r.fs_cold_s.push(secs(cold));
                r.fs_warm_s.push(secs(warm));
                r.fs_rss.push(fs.proc.peak_rss_mib()?);
            }
            let (s3, replicas) = self.start_replicas(false)?;
            let (mut gets_total, mut reqs_total) = (0, 0);
            for (i, replica) in replicas.iter().enumerate() {
                let a = self.up.sync_log()?;
                let took = self.pull_once(&replica.url(), &img)?;
                // What the replica still writes to the bucket after the client is done.
                settle_proc(&replica.proc);
                settle_proc(&s3.proc);
                let b = self.up.sync_log()?;
                let lines = self.up.log_between(a, b);
                let (gets, _) = blob_gets(&lines);
                gets_total += gets;
                reqs_total += lines.len();
                let r = &mut self.res.replicas;
                r.cold_s[i].push(secs(took));
                r.cold_gets[i].push(gets as f64);
                r.cold_reqs[i].push(lines.len() as f64);
            }
            self.res.replicas.cold_gets_total.push(gets_total as f64);
            self.res.replicas.cold_reqs_total.push(reqs_total as f64);
            for (i, replica) in replicas.iter().enumerate() {
                let a = self.up.sync_log()?;
                let took = self.pull_once(&replica.url(), &img)?;
                settle_proc(&replica.proc);
                let b = self.up.sync_log()?;
                let up_reqs = self.up.log_between(a, b).len();
                if up_reqs > 0 {
                    self.res.notes.push(format!(
                        "7. warm pull run {} through replica {}: {up_reqs} upstream requests",
                        rep + 1,
                        replica_name(i)
                    ));
                }
                let r = &mut self.res.replicas;
                r.warm_s[i].push(secs(took));
                r.rss[i].push(replica.proc.peak_rss_mib()?);
                r.cpu[i].push(replica.proc.cpu_secs()?);
            }
            self.res.replicas.s3_rss.push(s3.proc.peak_rss_mib()?);
            self.res.replicas.s3_cpu.push(s3.proc.cpu_secs()?);
            drop(replicas);
            drop(s3);
            let r = &self.res.replicas;
            let last = |x: &Series| x.0.last().copied().unwrap_or(f64::NAN);
            self.log(&format!(
                "7. replicas run {}: cold A {:.2}s ({} blob GETs), B {:.2}s ({}), C {:.2}s ({}); \
                 warm A {:.2}s; direct {:.2}s, filesystem ociregistry cold {:.2}s warm {:.2}s",
                rep + 1,
                last(&r.cold_s[0]),
                last(&r.cold_gets[0]),
                last(&r.cold_s[1]),
                last(&r.cold_gets[1]),
                last(&r.cold_s[2]),
                last(&r.cold_gets[2]),
                last(&r.warm_s[0]),
                last(&r.direct_s),
                last(&r.fs_cold_s),
                last(&r.fs_warm_s),
            ));

            // e) three clients at once, one per fresh replica.
            let direct = vec![self.up.url(); 3];
            let (d, direct_each) = self
                .rt
                .block_on(client::pulls_at_once(&direct, &img, CONNS));
            for got in direct_each {
                got?;
            }
            self.res.replicas.par_direct_s.push(secs(d));
            let (s3, replicas) = self.start_replicas(true)?;
            let bases: Vec<String> = replicas.iter().map(Ours::url).collect();
            let a = self.up.sync_log()?;
            let (all, each) = self.rt.block_on(client::pulls_at_once(&bases, &img, CONNS));
            for replica in &replicas {
                settle_proc(&replica.proc);
            }
            settle_proc(&s3.proc);
            let b = self.up.sync_log()?;
            let (gets, max_per_blob) = blob_gets(&self.up.log_between(a, b));
            let mut failed = 0;
            for (i, (got, replica)) in each.iter().zip(&replicas).enumerate() {
                match got {
                    Ok(took) => self.res.replicas.par_each_s[i].push(secs(*took)),
                    Err(e) => {
                        failed += 1;
                        let tail = replica.proc.tail();
                        let problems: Vec<&str> = tail
                            .lines()
                            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                            .collect();
                        self.res.notes.push(format!(
                            "7. at once, run {}: the client of replica {} failed: {e}; the \
                             replica logged {}",
                            rep + 1,
                            replica_name(i),
                            if problems.is_empty() {
                                "no warning or error".to_owned()
                            } else {
                                format!("`{}`", problems.join(" / "))
                            }
                        ));
                    }
                }
                self.res.replicas.par_rss[i].push(replica.proc.peak_rss_mib()?);
            }
            let r = &mut self.res.replicas;
            r.par_s.push(secs(all));
            r.par_failed.push(failed as f64);
            r.par_gets.push(gets as f64);
            r.par_max_per_blob.push(max_per_blob as f64);
            self.log(&format!(
                "7. replicas at once run {}: {:.2}s (direct {:.2}s), {gets} upstream blob GETs, \
                 up to {max_per_blob} of one blob, {failed} of 3 pulls failed",
                rep + 1,
                secs(all),
                secs(d),
            ));
        }
        Ok(())
    }

    /// Scenarios 3, 4 and 5 against one warm instance of each proxy.
    fn scenarios_warm(&mut self, want_blob: bool, want_manifest: bool, want_small: bool) -> R<()> {
        let proxies = [self.start_proxy(OURS)?, self.start_proxy(PEER)?];
        for p in &proxies {
            let (pull_img, small_img) = (self.pull_img.clone(), self.small_img.clone());
            self.pull_once(&p.url(), &pull_img)?;
            self.pull_once(&p.url(), &small_img)?;
            self.settle(p);
        }
        // 3. warm 64 MiB blob, one client, sequential downloads on a kept-alive connection.
        let layer = self.pull_img.layers[0].clone();
        let downloads = if want_blob {
            self.plan.warm_downloads
        } else {
            0
        };
        let urls = [
            format!(
                "{}/v2/{}/blobs/{}",
                proxies[OURS].url(),
                self.pull_img.repo,
                layer.digest
            ),
            format!(
                "{}/v2/{}/blobs/{}",
                proxies[PEER].url(),
                self.pull_img.repo,
                layer.digest
            ),
            self.nginx.blob_url(&layer.digest),
        ];
        self.rt.block_on(async {
            let c = client::new_client(1)?;
            for _ in 0..downloads {
                for (i, url) in urls.iter().enumerate() {
                    let t0 = Instant::now();
                    let n = client::fetch_blob(&c, url, None, layer.size).await?;
                    self.res.warm_mbs[i].push(n as f64 / 1e6 / t0.elapsed().as_secs_f64());
                }
            }
            Ok::<(), String>(())
        })?;
        if want_blob {
            self.log(&format!(
            "3. warm {} MiB blob: ociregistry {:.0} MB/s, distribution {:.0} MB/s, nginx {:.0} MB/s",
            layer.size / MIB,
            self.res.warm_mbs[OURS].median(),
            self.res.warm_mbs[PEER].median(),
            self.res.warm_mbs[BASE].median()
        ));
        }
        // 4. manifest by tag; 5. small blob.
        let small = self.small_img.layers[0].clone();
        let man_urls = [
            format!(
                "{}/v2/{}/manifests/{}",
                proxies[OURS].url(),
                self.small_img.repo,
                self.small_img.tag
            ),
            format!(
                "{}/v2/{}/manifests/{}",
                proxies[PEER].url(),
                self.small_img.repo,
                self.small_img.tag
            ),
            self.nginx.blob_url(&self.small_img.manifest_digest),
        ];
        let small_urls = [
            format!(
                "{}/v2/{}/blobs/{}",
                proxies[OURS].url(),
                self.small_img.repo,
                small.digest
            ),
            format!(
                "{}/v2/{}/blobs/{}",
                proxies[PEER].url(),
                self.small_img.repo,
                small.digest
            ),
            self.nginx.blob_url(&small.digest),
        ];
        for rep in 0..self.plan.wrk_reps {
            let kinds = [(true, &man_urls), (false, &small_urls)];
            for (manifest, urls) in kinds
                .into_iter()
                .filter(|(m, _)| if *m { want_manifest } else { want_small })
            {
                for (i, url) in urls.iter().enumerate() {
                    let proc = proxies.get(i).map(Proxy::proc);
                    let cpu0 = proc.map(|p| p.cpu_secs()).transpose()?;
                    let a = self.up.sync_log()?;
                    let r = wrk::run(url, Some(OCI_MANIFEST), self.plan.wrk_secs)?;
                    if let Some(p) = proxies.get(i) {
                        // Upstream requests the proxy still has in flight land in this run.
                        self.settle(p);
                    }
                    let b = self.up.sync_log()?;
                    let cpu1 = proc.map(|p| p.cpu_secs()).transpose()?;
                    let up_reqs = self.up.log_between(a, b).len() as f64;
                    let kind = if manifest { "manifest" } else { "small blob" };
                    if r.errors > 0 {
                        self.res.notes.push(format!(
                            "{kind} wrk run {} against {}: {} errors (non-2xx or socket) of {} requests",
                            rep + 1,
                            if i == BASE { "nginx" } else { name(i) },
                            r.errors,
                            r.requests
                        ));
                    }
                    let (rps, p50, p99) = if manifest {
                        (
                            &mut self.res.man_rps,
                            &mut self.res.man_p50,
                            &mut self.res.man_p99,
                        )
                    } else {
                        (
                            &mut self.res.small_rps,
                            &mut self.res.small_p50,
                            &mut self.res.small_p99,
                        )
                    };
                    rps[i].push(r.rps);
                    p50[i].push(r.p50_ms);
                    p99[i].push(r.p99_ms);
                    if i != BASE {
                        let reqs = r.requests.max(1) as f64;
                        let cpu_us = match (cpu0, cpu1) {
                            (Some(c0), Some(c1)) => (c1 - c0) * 1e6 / reqs,
                            _ => f64::NAN,
                        };
                        let (up, cpu) = if manifest {
                            (
                                &mut self.res.man_up_per_req,
                                &mut self.res.man_cpu_us_per_req,
                            )
                        } else {
                            (
                                &mut self.res.small_up_per_req,
                                &mut self.res.small_cpu_us_per_req,
                            )
                        };
                        up[i].push(up_reqs / reqs);
                        cpu[i].push(cpu_us);
                    }
                    self.log(&format!(
                        "{}. {kind} rep {} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} upstream requests",
                        if manifest { 4 } else { 5 },
                        rep + 1,
                        if i == BASE { "nginx" } else { name(i) },
                        r.rps,
                        r.p50_ms,
                        r.p99_ms,
                        up_reqs
                    ));
                }
            }
        }
        Ok(())
    }
}

fn read_first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
    })
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = read_first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let mem = read_first_line("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs (nproc), {model}, {mem} RAM, Linux {}",
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn report(b: &Bench<'_>, args: &Args, load_start: &str, took: Duration) -> String {
    let r = &b.res;
    let p = b.plan;
    let n_blobs = b.pull_img.blob_count() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### ociregistry benchmark{}\n",
        if p.quick {
            " (quick mode: smaller sizes, fewer runs; not comparable to the goals)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "- Command: `{}`", args.command);
    let _ = writeln!(s, "- Machine: {}", machine());
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min) at start: {load_start}; at end: {}; run took {:.0} s",
        loadavg(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- Tools: {}; {}; {}; ociregistry `{}`",
        command_output("docker-registry", &["--version"]),
        command_output(&procs::nginx_bin().display().to_string(), &["-v"]),
        command_output("wrk", &["-v"]),
        command_output("git", &["describe", "--always", "--dirty"]),
    );
    let _ = writeln!(
        s,
        "- Each cell: median (min–max) over the runs; ratios are of medians. Every cold \
         measurement uses a freshly started proxy with an empty cache. Clients pull over HTTP \
         with the bench's own client ({CONNS} connections per client, every blob verified by \
         sha256), all on 127.0.0.1.\n"
    );
    if args.wants_main() {
        s.push_str(&main_tables(r, p, n_blobs));
    }
    if args.wants(7) {
        s.push_str(&replica_tables(
            &r.replicas,
            p,
            n_blobs,
            b.pull_img.total_bytes(),
        ));
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\n#### Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The table, goals and CPU tables of scenarios 1 to 6 (issue 4).
fn main_tables(r: &Results, p: &Plan, n_blobs: f64) -> String {
    let mut s = String::new();
    let img = format!("{} x {} MiB", p.layers, p.layer_size / MIB);
    let _ = writeln!(
        s,
        "| # | scenario | metric | ociregistry | distribution (proxy) | baseline | ociregistry / baseline | distribution / baseline |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let mut row = |n: &str,
                   sc: &str,
                   metric: &str,
                   o: String,
                   d: String,
                   base: String,
                   ro: String,
                   rd: String| {
        let _ = writeln!(
            s,
            "| {n} | {sc} | {metric} | {o} | {d} | {base} | {ro} | {rd} |"
        );
    };
    let dash = || "–".to_owned();
    row(
        "1",
        &format!("cold pull {img} ({})", runs(p.reps_cold)),
        "wall time (s)",
        r.cold_s[OURS].cell(2),
        r.cold_s[PEER].cell(2),
        format!("direct: {}", r.cold_s[BASE].cell(2)),
        fmt_ratio(ratio(&r.cold_s[OURS], &r.cold_s[BASE])),
        fmt_ratio(ratio(&r.cold_s[PEER], &r.cold_s[BASE])),
    );
    row(
        "1",
        "",
        &format!("upstream blob GETs per pull ({n_blobs} blobs)"),
        r.cold_gets[OURS].cell(0),
        r.cold_gets[PEER].cell(0),
        dash(),
        dash(),
        dash(),
    );
    row(
        "1",
        "",
        "upstream requests per pull (all)",
        r.cold_upreqs[OURS].cell(0),
        r.cold_upreqs[PEER].cell(0),
        dash(),
        dash(),
        dash(),
    );
    row(
        "2",
        &format!(
            "{} clients pull the same cold image at once ({})",
            p.clients,
            runs(p.reps_many)
        ),
        "total wall time (s)",
        r.many_s[OURS].cell(2),
        r.many_s[PEER].cell(2),
        format!("direct: {}", r.many_s[BASE].cell(2)),
        fmt_ratio(ratio(&r.many_s[OURS], &r.many_s[BASE])),
        fmt_ratio(ratio(&r.many_s[PEER], &r.many_s[BASE])),
    );
    row(
        "2",
        "",
        &format!("upstream blob GETs in total ({n_blobs} blobs)"),
        r.many_gets[OURS].cell(0),
        r.many_gets[PEER].cell(0),
        dash(),
        dash(),
        dash(),
    );
    row(
        "2",
        "",
        "most upstream GETs of a single blob",
        r.many_max_per_blob[OURS].cell(0),
        r.many_max_per_blob[PEER].cell(0),
        dash(),
        dash(),
        dash(),
    );
    row(
        "3",
        &format!(
            "warm {} MiB blob, one client ({})",
            p.layer_size / MIB,
            runs(p.warm_downloads)
        ),
        "MB/s",
        r.warm_mbs[OURS].cell(0),
        r.warm_mbs[PEER].cell(0),
        format!("nginx: {}", r.warm_mbs[BASE].cell(0)),
        fmt_ratio(ratio(&r.warm_mbs[OURS], &r.warm_mbs[BASE])),
        fmt_ratio(ratio(&r.warm_mbs[PEER], &r.warm_mbs[BASE])),
    );
    let wrk = format!("wrk -t2 -c64 -d{}s, {}", p.wrk_secs, runs(p.wrk_reps));
    row(
        "4",
        &format!("warm manifest by tag ({wrk})"),
        "req/s",
        r.man_rps[OURS].cell(0),
        r.man_rps[PEER].cell(0),
        format!("nginx (same bytes): {}", r.man_rps[BASE].cell(0)),
        fmt_ratio(ratio(&r.man_rps[OURS], &r.man_rps[BASE])),
        fmt_ratio(ratio(&r.man_rps[PEER], &r.man_rps[BASE])),
    );
    row(
        "4",
        "",
        "p50 / p99 latency (ms)",
        format!("{} / {}", r.man_p50[OURS].cell(2), r.man_p99[OURS].cell(2)),
        format!("{} / {}", r.man_p50[PEER].cell(2), r.man_p99[PEER].cell(2)),
        format!("{} / {}", r.man_p50[BASE].cell(2), r.man_p99[BASE].cell(2)),
        dash(),
        dash(),
    );
    row(
        "4",
        "",
        "upstream requests per client request",
        r.man_up_per_req[OURS].cell(3),
        r.man_up_per_req[PEER].cell(3),
        dash(),
        dash(),
        dash(),
    );
    row(
        "5",
        &format!("warm {} KiB blob ({wrk})", p.small_size / 1024),
        "req/s",
        r.small_rps[OURS].cell(0),
        r.small_rps[PEER].cell(0),
        format!("nginx: {}", r.small_rps[BASE].cell(0)),
        fmt_ratio(ratio(&r.small_rps[OURS], &r.small_rps[BASE])),
        fmt_ratio(ratio(&r.small_rps[PEER], &r.small_rps[BASE])),
    );
    row(
        "5",
        "",
        "p50 / p99 latency (ms)",
        format!(
            "{} / {}",
            r.small_p50[OURS].cell(2),
            r.small_p99[OURS].cell(2)
        ),
        format!(
            "{} / {}",
            r.small_p50[PEER].cell(2),
            r.small_p99[PEER].cell(2)
        ),
        format!(
            "{} / {}",
            r.small_p50[BASE].cell(2),
            r.small_p99[BASE].cell(2)
        ),
        dash(),
        dash(),
    );
    row(
        "6",
        &format!(
            "{} MiB single-layer cold pull ({})",
            p.big_size / MIB,
            runs(p.reps_big)
        ),
        "peak RSS of the proxy (MiB)",
        r.big_rss[OURS].cell(1),
        r.big_rss[PEER].cell(1),
        dash(),
        dash(),
        dash(),
    );
    row(
        "6",
        "",
        "wall time (s)",
        r.big_s[OURS].cell(2),
        r.big_s[PEER].cell(2),
        format!("direct: {}", r.big_s[BASE].cell(2)),
        fmt_ratio(ratio(&r.big_s[OURS], &r.big_s[BASE])),
        fmt_ratio(ratio(&r.big_s[PEER], &r.big_s[BASE])),
    );
    row(
        "6",
        &format!("scenario 2 ({} clients)", p.clients),
        "peak RSS of the proxy (MiB)",
        r.many_rss[OURS].cell(1),
        r.many_rss[PEER].cell(1),
        dash(),
        dash(),
        dash(),
    );

    // Goals.
    let mark = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let cold_ratio = ratio(&r.cold_s[OURS], &r.cold_s[BASE]);
    let many_ratio = ratio(&r.many_s[OURS], &r.many_s[BASE]);
    let warm_ratio = ratio(&r.warm_mbs[OURS], &r.warm_mbs[BASE]);
    let man_ratio = ratio(&r.man_rps[OURS], &r.man_rps[BASE]);
    let goals = [
        (
            "Cold pull ≤ 1.15x direct, exactly one upstream GET per blob",
            cold_ratio <= 1.15 && r.cold_gets[OURS].all_eq(n_blobs),
            format!(
                "{:.2}x direct, {} blob GETs per pull for {n_blobs} blobs (distribution: {:.2}x, {})",
                cold_ratio,
                r.cold_gets[OURS].cell(0),
                ratio(&r.cold_s[PEER], &r.cold_s[BASE]),
                r.cold_gets[PEER].cell(0)
            ),
        ),
        (
            "20 concurrent cold pulls: exactly one upstream GET per blob, total ≤ 1.1x direct",
            many_ratio <= 1.1 && r.many_gets[OURS].all_eq(n_blobs),
            format!(
                "{:.2}x direct, {} blob GETs in total (distribution: {:.2}x, {}, up to {} of one blob)",
                many_ratio,
                r.many_gets[OURS].cell(0),
                ratio(&r.many_s[PEER], &r.many_s[BASE]),
                r.many_gets[PEER].cell(0),
                r.many_max_per_blob[PEER].max()
            ),
        ),
        (
            "Warm 64 MiB blob ≥ 0.8x nginx sendfile",
            warm_ratio >= 0.8,
            format!(
                "{:.2}x nginx ({:.0} vs {:.0} MB/s)",
                warm_ratio,
                r.warm_mbs[OURS].median(),
                r.warm_mbs[BASE].median()
            ),
        ),
        (
            "Warm manifest by tag ≥ 0.5x nginx's small-file rate, zero upstream requests",
            man_ratio >= 0.5 && r.man_up_per_req[OURS].all_eq(0.0),
            format!(
                "{:.2}x nginx ({:.0} vs {:.0} req/s), {} upstream requests per request (distribution: {:.0} req/s, {})",
                man_ratio,
                r.man_rps[OURS].median(),
                r.man_rps[BASE].median(),
                r.man_up_per_req[OURS].cell(3),
                r.man_rps[PEER].median(),
                r.man_up_per_req[PEER].cell(3),
            ),
        ),
        (
            "Peak RSS ≤ 32 MiB for the 1 GiB cold pull",
            r.big_rss[OURS].max() <= 32.0,
            format!(
                "max {:.1} MiB over {} runs of a {} MiB pull (distribution: {:.1} MiB)",
                r.big_rss[OURS].max(),
                r.big_rss[OURS].0.len(),
                p.big_size / MIB,
                r.big_rss[PEER].max()
            ),
        ),
        (
            "Peak RSS ≤ 64 MiB for the 20-client cold pull",
            r.many_rss[OURS].max() <= 64.0,
            format!(
                "max {:.1} MiB (distribution: {:.1} MiB)",
                r.many_rss[OURS].max(),
                r.many_rss[PEER].max()
            ),
        ),
    ];
    let measured = [
        !r.cold_s[OURS].0.is_empty(),
        !r.many_s[OURS].0.is_empty(),
        !r.warm_mbs[OURS].0.is_empty(),
        !r.man_rps[OURS].0.is_empty(),
        !r.big_rss[OURS].0.is_empty(),
        !r.many_rss[OURS].0.is_empty(),
    ];
    let _ = writeln!(s, "\n#### Goals (issue 4)\n");
    for ((g, ok, obs), measured) in goals.iter().zip(measured) {
        if measured {
            let _ = writeln!(s, "- {} — {g}: {obs}", mark(*ok));
        } else {
            let _ = writeln!(s, "- not measured in this run — {g}");
        }
    }
    let _ = writeln!(
        s,
        "\n#### Server CPU (user + system, from /proc/PID/stat)\n"
    );
    let _ = writeln!(
        s,
        "| measurement | ociregistry | distribution |\n|---|---|---|"
    );
    let cpu_rows: [(&str, &[Series; 2], usize); 5] = [
        ("cold pull (s of CPU, whole process life)", &r.cold_cpu, 2),
        ("20-client cold pull (s of CPU)", &r.many_cpu, 2),
        ("big cold pull (s of CPU)", &r.big_cpu, 2),
        (
            "warm manifest (µs of CPU per request)",
            &r.man_cpu_us_per_req,
            1,
        ),
        (
            "warm small blob (µs of CPU per request)",
            &r.small_cpu_us_per_req,
            1,
        ),
    ];
    for (label, series, prec) in cpu_rows {
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            series[OURS].cell(prec),
            series[PEER].cell(prec)
        );
    }
    if !r.cold_client_cpu[BASE].0.is_empty() {
        let _ = writeln!(s, "\n{}", cpu_budget(r));
    }
    s
}

/// Scenario 1's CPU, process by process: on a machine whose cores are all busy, the wall
/// time of a pull is its total CPU divided by the cores, so this table is what explains the
/// ratio to direct.
fn cpu_budget(r: &Results) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#### CPU budget of one cold pull (scenario 1; seconds of CPU, user + system)\n"
    );
    let _ = writeln!(
        s,
        "| process | direct | ociregistry | distribution |\n|---|---|---|---|"
    );
    let cell = |series: &Series| series.cell(3);
    let none = Series::default();
    let rows: [(&str, [&Series; 3]); 3] = [
        (
            "bench client (receive + sha256)",
            [
                &r.cold_client_cpu[BASE],
                &r.cold_client_cpu[OURS],
                &r.cold_client_cpu[PEER],
            ],
        ),
        (
            "upstream docker-registry",
            [
                &r.cold_up_cpu[BASE],
                &r.cold_up_cpu[OURS],
                &r.cold_up_cpu[PEER],
            ],
        ),
        ("proxy", [&none, &r.cold_cpu[OURS], &r.cold_cpu[PEER]]),
    ];
    for (label, [b, o, p]) in rows {
        let _ = writeln!(s, "| {label} | {} | {} | {} |", cell(b), cell(o), cell(p));
    }
    let total = |w: usize| {
        let proxy = if w == BASE {
            0.0
        } else {
            r.cold_cpu[w].median()
        };
        r.cold_client_cpu[w].median() + r.cold_up_cpu[w].median() + proxy
    };
    let _ = writeln!(
        s,
        "| total (medians) | {:.3} | {:.3} | {:.3} |",
        total(BASE),
        total(OURS),
        total(PEER)
    );
    let _ = writeln!(
        s,
        "| total / {cores} cores | {:.3} | {:.3} | {:.3} |",
        total(BASE) / cores,
        total(OURS) / cores,
        total(PEER) / cores
    );
    let _ = writeln!(
        s,
        "| wall time (median) | {:.3} | {:.3} | {:.3} |",
        r.cold_s[BASE].median(),
        r.cold_s[OURS].median(),
        r.cold_s[PEER].median()
    );
    s
}

fn run(args: &Args) -> R<String> {
    let plan = &args.plan;
    let started = Instant::now();
    let load_start = loadavg();
    if !args.bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p ociregistry` or pass --ociregistry",
            args.bin.display()
        ));
    }
    for tool in ["docker-registry", "wrk"] {
        if !procs::have(Path::new(tool)) {
            return Err(format!(
                "`{tool}` not found: run scripts/bench.sh, which installs it"
            ));
        }
    }
    if !procs::have(&procs::nginx_bin()) {
        return Err("`nginx` not found: run scripts/bench.sh, which installs it".into());
    }
    if args.wants(7) && procs::s3s_fs_bin().is_none() {
        return Err(
            "`s3s-fs` not found ($S3S_FS, <repo>/.tools/bin, PATH): run scripts/bench.sh, which installs it"
                .into(),
        );
    }
    let work = procs::open_tempdir(&args.work_parent, "ociregistry-bench-")?;
    procs::set_watchdog_dir(work.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("bench-worker")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    eprintln!("[bench] machine: {}", machine());
    let up = Registry::start(work.path(), "upstream", None, true)?;
    eprintln!(
        "[bench] upstream docker-registry on {}; seeding images",
        up.url()
    );
    let (pull_img, big_img, small_img) = rt.block_on(async {
        let c = client::new_client(1)?;
        let base = up.url();
        let layers = vec![plan.layer_size; plan.layers];
        let pull = client::push_image(&c, &base, "bench/pull", "v1", &layers, 1).await?;
        let big = client::push_image(&c, &base, "bench/big", "v1", &[plan.big_size], 2).await?;
        let small =
            client::push_image(&c, &base, "bench/small", "v1", &[plan.small_size], 3).await?;
        Ok::<_, String>((pull, big, small))
    })?;
    let nginx = Nginx::start(work.path(), &up.blob_root())?;
    let mut b = Bench {
        plan,
        work: work.path(),
        bin: &args.bin,
        rt: &rt,
        up,
        nginx,
        pull_img,
        big_img,
        small_img,
        started,
        res: Results::default(),
    };
    b.log(&format!(
        "seeded: {} ({} MiB), {} ({} MiB), {}; nginx on {}",
        b.pull_img.repo,
        b.pull_img.total_bytes() / MIB,
        b.big_img.repo,
        b.big_img.total_bytes() / MIB,
        b.small_img.repo,
        b.nginx.port
    ));
    // Warm the upstream's page cache so that the first direct run is not penalised.
    let (pi, bi) = (b.pull_img.clone(), b.big_img.clone());
    b.pull_once(&b.up.url(), &pi)?;
    b.pull_once(&b.up.url(), &bi)?;
    if args.wants(1) {
        b.scenario_cold()?;
    }
    if args.wants(2) {
        b.scenario_many()?;
    }
    if args.wants(3) || args.wants(4) || args.wants(5) {
        b.scenarios_warm(args.wants(3), args.wants(4), args.wants(5))?;
    }
    if args.wants(6) {
        b.scenario_big()?;
    }
    if args.wants(7) {
        b.scenario_replicas()?;
    }
    let text = report(&b, args, &load_start, started.elapsed());
    drop(b);
    drop(rt);
    drop(work);
    Ok(text)
}

fn main() {
    let args = parse_args();
    procs::start_watchdog(args.plan.time_limit);
    match run(&args) {
        Ok(text) => {
            println!("{text}");
            if let Some(dir) = args.out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(&args.out, &text) {
                Ok(()) => eprintln!("[bench] results written to {}", args.out.display()),
                Err(e) => eprintln!("[bench] cannot write {}: {e}", args.out.display()),
            }
        }
        Err(e) => {
            procs::kill_all();
            eprintln!("[bench] FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// Scenario 7's table: three replicas on one bucket of `s3s-fs` (issue 12).
fn replica_tables(r: &ReplicaResults, p: &Plan, n_blobs: f64, img_bytes: u64) -> String {
    let mut s = String::new();
    let img = format!("{} x {} MiB", p.layers, p.layer_size / MIB);
    let runs_text = runs(r.cold_s[0].0.len());
    let s3s = procs::s3s_fs_bin().map_or_else(
        || "?".to_owned(),
        |b| command_output(&b.display().to_string(), &["--version"]),
    );
    let _ = writeln!(
        s,
        "\n#### Scenario 7: three replicas on one bucket ({s3s}, on 127.0.0.1)\n"
    );
    let _ = writeln!(
        s,
        "Each run: a fresh `s3s-fs` with an empty bucket and three fresh `ociregistry serve` \
         replicas (A, B, C; `storage.s3` on that bucket, each its own `--image-path`). A cold \
         pull through A, then the same image through B and C (in the bucket, not on their \
         disk), then a second pull through each (their local copy). Then another fresh bucket \
         and replicas, and three clients pulling the cold image at once, one per replica. \
         Baselines: direct pulls, and `ociregistry` on its own directory (no bucket).\n"
    );
    let _ = writeln!(
        s,
        "| # | scenario | metric | replica A | replica B | replica C | all three | baseline | vs baseline |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let mut row =
        |sc: &str, metric: &str, cells: [String; 3], all: String, base: String, vs: String| {
            let _ = writeln!(
                s,
                "| 7 | {sc} | {metric} | {} | {} | {} | {all} | {base} | {vs} |",
                cells[0], cells[1], cells[2]
            );
        };
    let dash = || "–".to_owned();
    let each = |x: &[Series; 3], prec: usize| [x[0].cell(prec), x[1].cell(prec), x[2].cell(prec)];
    let ratios = |x: &[Series; 3], base: &Series| {
        format!(
            "A {}, B {}, C {}",
            fmt_ratio(ratio(&x[0], base)),
            fmt_ratio(ratio(&x[1], base)),
            fmt_ratio(ratio(&x[2], base))
        )
    };
    row(
        &format!("cold pull {img} through A, then B, then C ({runs_text})"),
        "wall time (s)",
        each(&r.cold_s, 2),
        dash(),
        format!(
            "direct: {}; ociregistry on its own directory: {}",
            r.direct_s.cell(2),
            r.fs_cold_s.cell(2)
        ),
        format!("{} (of direct)", ratios(&r.cold_s, &r.direct_s)),
    );
    row(
        "",
        &format!("upstream blob GETs ({n_blobs} blobs)"),
        each(&r.cold_gets, 0),
        r.cold_gets_total.cell(0),
        dash(),
        dash(),
    );
    row(
        "",
        "upstream requests (all)",
        each(&r.cold_reqs, 0),
        r.cold_reqs_total.cell(0),
        dash(),
        dash(),
    );
    row(
        "then a second pull through each (local copy)",
        "wall time (s)",
        each(&r.warm_s, 2),
        dash(),
        format!("ociregistry on its own directory: {}", r.fs_warm_s.cell(2)),
        format!("{} (of own directory)", ratios(&r.warm_s, &r.fs_warm_s)),
    );
    let mb = img_bytes as f64 / 1e6;
    let mbs = |x: &Series| Series(x.0.iter().map(|t| mb / t).collect());
    let warm_mbs = [mbs(&r.warm_s[0]), mbs(&r.warm_s[1]), mbs(&r.warm_s[2])];
    row(
        "",
        "MB/s (image bytes / wall time, sha256 verified)",
        each(&warm_mbs, 0),
        dash(),
        format!(
            "ociregistry on its own directory: {}",
            mbs(&r.fs_warm_s).cell(0)
        ),
        dash(),
    );
    row(
        "",
        "peak RSS after both pulls (MiB)",
        each(&r.rss, 1),
        format!("s3s-fs: {}", r.s3_rss.cell(1)),
        format!("ociregistry on its own directory: {}", r.fs_rss.cell(1)),
        dash(),
    );
    row(
        "",
        "CPU over both pulls (s)",
        each(&r.cpu, 2),
        format!("s3s-fs: {}", r.s3_cpu.cell(2)),
        dash(),
        dash(),
    );
    row(
        &format!("3 clients at once, one per fresh `cluster` replica, cold {img} ({runs_text})"),
        "wall time (s; all three: to the last finish)",
        each(&r.par_each_s, 2),
        r.par_s.cell(2),
        format!("direct, 3 clients at once: {}", r.par_direct_s.cell(2)),
        format!(
            "all three {} (of direct)",
            fmt_ratio(ratio(&r.par_s, &r.par_direct_s))
        ),
    );
    row(
        "",
        &format!("upstream blob GETs in total ({n_blobs} blobs)"),
        [dash(), dash(), dash()],
        r.par_gets.cell(0),
        dash(),
        dash(),
    );
    row(
        "",
        "most upstream GETs of a single blob",
        [dash(), dash(), dash()],
        r.par_max_per_blob.cell(0),
        dash(),
        dash(),
    );
    row(
        "",
        "client pulls that failed (of 3)",
        [dash(), dash(), dash()],
        r.par_failed.cell(0),
        dash(),
        dash(),
    );
    row(
        "",
        "peak RSS (MiB)",
        each(&r.par_rss, 1),
        dash(),
        dash(),
        dash(),
    );
    let mark = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let _ = writeln!(s, "\n#### Goals (issue 12)\n");
    let _ = writeln!(
        s,
        "- {} — what one replica cached, the others serve with zero upstream GETs: B {}, C {} blob GETs",
        mark(r.cold_gets[1].all_eq(0.0) && r.cold_gets[2].all_eq(0.0)),
        r.cold_gets[1].cell(0),
        r.cold_gets[2].cell(0),
    );
    let _ = writeln!(
        s,
        "- {} — one upstream fetch per blob across the fleet when three replicas (with \
         `cluster`) miss at once: {} blob GETs for {n_blobs} blobs, up to {} of one blob",
        mark(r.par_gets.all_eq(n_blobs)),
        r.par_gets.cell(0),
        r.par_max_per_blob.cell(0),
    );
    s
}
