//! A throw-away PKI made with the `openssl` CLI: a CA, a server certificate for
//! `IP:127.0.0.1` and a client certificate, both signed by the CA (EC P-256, PEM, keys in
//! PKCS#8). For upstreams with `http.tls` and proxies with `registries[].tls`.

use crate::procs::run_with_timeout;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug)]
pub struct TestPki {
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (`.cert`, as skopeo's cert-dir layout names it) and key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str], cwd: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(cwd);
    let (ok, out, err) = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(ok, "openssl {args:?} failed: {out}{err}");
}

impl TestPki {
    /// Generates everything in a fresh temp dir. `server_ip` goes into the server
    /// certificate's subjectAltName (`IP:<server_ip>`).
    pub fn generate(server_ip: &str) -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=ociregistry e2e test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca, d);
        let leaf = |name: &str, cn: &str, ext: &str| {
            std::fs::write(d.join(format!("{name}.ext")), ext).expect("write ext");
            let mut req = vec!["req", "-new"];
            req.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&req, d);
            let crt = format!("{name}.crt");
            let extfile = format!("{name}.ext");
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
                d,
            );
        };
        leaf(
            "server",
            server_ip,
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{server_ip}\n"
            ),
        );
        leaf(
            "client",
            "ociregistry-e2e-client",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
        std::fs::rename(d.join("client.crt"), d.join("client.cert")).expect("rename client");
        TestPki {
            ca_crt: d.join("ca.crt"),
            ca_key: d.join("ca.key"),
            server_crt: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.cert"),
            client_key: d.join("client.key"),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`crate::upstream::UpstreamTls`] serving the server certificate and, with
    /// `require_client_cert`, requiring a client certificate signed by the CA.
    pub fn upstream_tls(&self, require_client_cert: bool) -> crate::upstream::UpstreamTls {
        crate::upstream::UpstreamTls {
            certificate: self.server_crt.clone(),
            key: self.server_key.clone(),
            client_cas: if require_client_cert {
                vec![self.ca_crt.clone()]
            } else {
                Vec::new()
            },
            rig_client: Some((
                self.ca_crt.clone(),
                self.client_cert.clone(),
                self.client_key.clone(),
            )),
        }
    }
}
