//! containerd as the client: a real `containerd` (started by the test in a directory of its
//! own, its socket there, no CRI) pulls through the mirror with `ctr`. The built-in
//! hello-world image is pulled and run with no upstream involved; an image of a real
//! docker-registry upstream is pulled, then pulled again from the cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ociregistry_e2e::images::{self, ImageKind};
use ociregistry_e2e::procs::{ChildProc, run_with_timeout};
use ociregistry_e2e::upstream::Upstream;
use ociregistry_e2e::{Proxy, require_tools, require_upstream_tools, wait_for};

/// A containerd of the test's own; killed when dropped.
struct Containerd {
    _proc: ChildProc,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("containerd dir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .expect("containerd config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let proc = ChildProc::spawn("containerd", cmd, dir.path());
        wait_for(
            "containerd's socket",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || socket.exists().then_some(()),
        );
        Containerd {
            _proc: proc,
            socket,
            _dir: dir,
        }
    }

    /// `ctr` in namespace `ns`; its stdout after checking that it succeeded.
    fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns])
            .args(args);
        let (ok, out, err) = run_with_timeout(cmd, Duration::from_secs(120));
        assert!(ok, "ctr {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }

    /// The digest `ctr images ls` shows for `reference` in `ns`.
    fn image_digest(&self, ns: &str, reference: &str) -> String {
        let out = self.ctr(ns, &["images", "ls"]);
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("{reference} not listed:\n{out}"))
            .to_owned()
    }
}

fn tools() -> bool {
    require_upstream_tools() && require_tools(&["containerd", "ctr", "runc"])
}

fn is_root() -> bool {
    std::fs::metadata(Path::new("/proc/self"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn containerd_pulls_and_runs_the_built_in_hello_world_and_pulls_through_the_mirror() {
    if !tools() {
        return;
    }
    assert!(is_root(), "containerd needs root (CI runs as root)");
    let mut up = Upstream::anonymous();
    let img = images::seed(
        &up,
        &images::unique_repo("ctr"),
        "v1",
        ImageKind::small_oci(),
    );
    let proxy = Proxy::builder()
        .upstream(&up)
        .default_ns(&up.host())
        .start();
    let ctrd = Containerd::start();
    let host = proxy.host();

    // The built-in image: pulled, unpacked and run; the upstream is never asked.
    let before = up.total_requests();
    let hello = format!("{host}/hello-world:latest");
    ctrd.ctr("e2e", &["images", "pull", "--plain-http", &hello]);
    let out = ctrd.ctr("e2e", &["run", "--rm", &hello, "hello-e2e"]);
    assert!(out.contains("Hello from ociregistry!"), "{out}");
    assert_eq!(
        up.total_requests(),
        before,
        "hello-world asked the upstream"
    );

    // An upstream image through the mirror, then from its cache in another namespace.
    let reference = format!("{host}/{}:{}", img.repo, img.tag);
    ctrd.ctr("e2e", &["images", "pull", "--plain-http", &reference]);
    assert_eq!(ctrd.image_digest("e2e", &reference), img.manifest.digest);
    let blob_gets = up.count_requests("GET", "/blobs/");
    assert!(
        blob_gets >= img.blobs().len(),
        "the first pull fetched the blobs"
    );
    ctrd.ctr("again", &["images", "pull", "--plain-http", &reference]);
    assert_eq!(ctrd.image_digest("again", &reference), img.manifest.digest);
    assert_eq!(
        up.count_requests("GET", "/blobs/"),
        blob_gets,
        "the second pull came from the cache"
    );
}
