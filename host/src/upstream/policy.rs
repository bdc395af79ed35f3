//! The upstream policy (`upstreams.allow`/`deny`, `registries[].redirectHosts`): which hosts
//! clients may name, which addresses may be connected to, and the one DNS resolver every
//! upstream client shares, which drops the addresses the policy forbids for a name.
//!
//! Two checks, one rule set:
//! - names clients give (`?ns=`, in-path, `defaultNs`) pass `deny`, then `allow`
//!   ([`Policy::check_named`]); redirect hops and token realms pass `deny` only
//!   ([`Policy::check_hop`]): blob storage (S3, CloudFront) lives on hosts nobody lists;
//! - addresses: loopback, private, link-local, CGNAT, unspecified, multicast, broadcast,
//!   documentation and reserved ranges (and their IPv4-mapped/compatible IPv6 forms) need
//!   consent. DNS names are checked on the resolved addresses at connect time
//!   ([`PolicyResolver`]); IP literals never reach a resolver, so they are checked before
//!   connecting, keyed by exact `ip:port` of a `registries` entry.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{AllowRule, HostPattern, Scheme, Settings};

/// Why the policy refused a host or an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The host matches an `upstreams.deny` pattern.
    #[error("upstream policy: {host} is refused by upstreams.deny pattern {pattern}")]
    Denied {
        /// The host.
        host: String,
        /// The pattern.
        pattern: String,
    },
    /// No `upstreams.allow` entry admits the host.
    #[error(
        "upstream policy: {host} is not allowed by upstreams.allow; list it under registries or add a pattern for it to upstreams.allow"
    )]
    NotAllowed {
        /// The host.
        host: String,
    },
    /// The host is (or resolves to) an address that needs consent it does not have.
    #[error(
        "upstream policy: {addr} ({class}) is not allowed for host {host}; list the registry under registries or allow it with upstreams.allow {{host, privateAddresses: true}}"
    )]
    Address {
        /// The host as named.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// Which kind of address it is.
        class: &'static str,
    },
    /// The host cannot be read as a URL host.
    #[error("upstream policy: {host} is not a usable host")]
    Unusable {
        /// The host.
        host: String,
    },
}

/// The policy, built once from the settings.
#[derive(Debug)]
pub struct Policy {
    allow: Vec<AllowRule>,
    deny: Vec<HostPattern>,
    /// Canonical names of `registries` entries and `defaultNs` (for `allow: configured`).
    configured: HashSet<String>,
    /// Canonical names of `registries` entries: always allowed (listing is consent).
    listed: HashSet<String>,
    /// Host names (no port) of `registries` entries and `defaultNs`: consent for the
    /// addresses they resolve to.
    consent_names: HashSet<String>,
    /// `ip:port` of IP-literal `registries` entries and `defaultNs`.
    consent_sockets: HashSet<SocketAddr>,
    /// Every registry's `redirectHosts` (the resolver does not know which registry asks).
    redirect_hosts: Vec<HostPattern>,
}

impl Policy {
    /// The policy of these settings.
    pub fn new(settings: &Settings) -> Policy {
        let mut p = Policy {
            allow: settings.upstream_policy.allow.clone(),
            deny: settings.upstream_policy.deny.clone(),
            configured: HashSet::new(),
            listed: settings
                .registries
                .iter()
                .map(|r| super::canonical_name(&r.name).to_owned())
                .collect(),
            consent_names: HashSet::new(),
            consent_sockets: HashSet::new(),
            redirect_hosts: Vec::new(),
        };
        let named = settings
            .registries
            .iter()
            .map(|r| (r.name.as_str(), r.scheme))
            .chain(std::iter::once((
                super::canonical_name(&settings.default_ns),
                Scheme::Https,
            )));
        for (name, scheme) in named {
            let name = super::canonical_name(name);
            p.configured.insert(name.to_owned());
            // docker.io is `defaultNs` unless the operator says otherwise: being the default
            // is no consent to private addresses for Docker Hub's names.
            if name == super::DOCKER_HUB && !p.listed.contains(name) {
                continue;
            }
            let Some((host, port)) = url_host(&super::api_host(name), scheme) else {
                continue;
            };
            match host {
                url::Host::Domain(d) => {
                    p.consent_names.insert(d);
                }
                url::Host::Ipv4(ip) => {
                    p.consent_sockets.insert(SocketAddr::new(ip.into(), port));
                }
                url::Host::Ipv6(ip) => {
                    p.consent_sockets.insert(SocketAddr::new(ip.into(), port));
                }
            }
        }
        for r in &settings.registries {
            p.redirect_hosts.extend(r.redirect_hosts.iter().cloned());
            // An endpoint listed under an entry has the consent its entry has.
            for e in &r.endpoints {
                let Ok(url) = reqwest::Url::parse(&e.url) else {
                    continue;
                };
                match (url.host(), url.port_or_known_default()) {
                    (Some(url::Host::Domain(d)), _) => {
                        p.consent_names.insert(d.to_ascii_lowercase());
                    }
                    (Some(url::Host::Ipv4(ip)), Some(port)) => {
                        p.consent_sockets.insert(SocketAddr::new(ip.into(), port));
                    }
                    (Some(url::Host::Ipv6(ip)), Some(port)) => {
                        p.consent_sockets.insert(SocketAddr::new(ip.into(), port));
                    }
                    _ => {}
                }
            }
        }
        p
    }

    /// A host a client named (canonical, validated), before anything is contacted: `deny`,
    /// then `allow` (a `registries` entry always passes it), then, for an IP literal, the
    /// address rule.
    pub fn check_named(&self, name: &str, scheme: Scheme) -> Result<(), PolicyError> {
        let (host, port) =
            url_host(&super::api_host(name), scheme).ok_or_else(|| PolicyError::Unusable {
                host: name.to_owned(),
            })?;
        let shown = bare(&host);
        self.check_deny(&shown)?;
        let allowed = self.listed.contains(name)
            || self.allow.iter().any(|rule| match rule {
                AllowRule::Configured => self.configured.contains(name),
                AllowRule::Host { pattern, .. } => pattern.matches(&shown),
            });
        if !allowed {
            return Err(PolicyError::NotAllowed {
                host: name.to_owned(),
            });
        }
        self.check_literal(&host, port, name, &[])
    }

    /// A redirect hop or a token realm: `deny` and, for an IP literal, the address rule
    /// (`allow` restricts what clients may name, not where a registry keeps its blobs).
    /// `redirect_hosts` are the asking registry's own; `registry` is its URL: a hop to the
    /// registry's own IP literal (another port) has the consent the registry itself has.
    pub fn check_hop(
        &self,
        url: &reqwest::Url,
        redirect_hosts: &[HostPattern],
        registry: &reqwest::Url,
    ) -> Result<(), PolicyError> {
        let shown = url.host_str().unwrap_or("").to_owned();
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(PolicyError::Unusable { host: shown });
        };
        let host = host.to_owned();
        let bare_host = bare(&host);
        self.check_deny(&bare_host)?;
        if registry.host().map(|h| h.to_owned()) == Some(host.clone()) {
            return Ok(());
        }
        self.check_literal(&host, port, &bare_host, redirect_hosts)
    }

    fn check_deny(&self, host: &str) -> Result<(), PolicyError> {
        match self.deny.iter().find(|p| p.matches(host)) {
            Some(p) => Err(PolicyError::Denied {
                host: host.to_owned(),
                pattern: p.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn check_literal(
        &self,
        host: &url::Host<String>,
        port: u16,
        shown: &str,
        redirect_hosts: &[HostPattern],
    ) -> Result<(), PolicyError> {
        let ip: IpAddr = match host {
            url::Host::Domain(_) => return Ok(()),
            url::Host::Ipv4(ip) => (*ip).into(),
            url::Host::Ipv6(ip) => (*ip).into(),
        };
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        let bare_host = bare(host);
        if self.consent_sockets.contains(&SocketAddr::new(ip, port))
            || self.private_pattern(&bare_host)
            || redirect_hosts.iter().any(|p| p.matches(&bare_host))
        {
            return Ok(());
        }
        Err(PolicyError::Address {
            host: shown.to_owned(),
            addr: ip,
            class,
        })
    }

    fn private_pattern(&self, host: &str) -> bool {
        self.allow.iter().any(|rule| {
            matches!(rule, AllowRule::Host { pattern, private_addresses: true } if pattern.matches(host))
        })
    }

    /// Whether a DNS name may resolve to addresses that need consent.
    fn name_has_consent(&self, host: &str) -> bool {
        self.consent_names.contains(host)
            || self.private_pattern(host)
            || self.redirect_hosts.iter().any(|p| p.matches(host))
    }

    /// The addresses of `host` the policy lets a connection use; an error when it forbids
    /// them all.
    pub fn filter(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, PolicyError> {
        self.check_deny(host)?;
        if self.name_has_consent(host) {
            return Ok(addrs);
        }
        let mut refused = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match classify(a.ip()) {
                Some(class) => {
                    refused.get_or_insert((a.ip(), class));
                    false
                }
                None => true,
            })
            .collect();
        match (kept.is_empty(), refused) {
            (true, Some((addr, class))) => Err(PolicyError::Address {
                host: host.to_owned(),
                addr,
                class,
            }),
            _ => Ok(kept),
        }
    }
}

/// `host` and the port a URL `scheme://authority/` connects to, as the URL parser reads
/// them (so `0x7f.1` is the IPv4 literal it is).
fn url_host(authority: &str, scheme: Scheme) -> Option<(url::Host<String>, u16)> {
    let url = reqwest::Url::parse(&format!("{scheme}://{authority}/")).ok()?;
    Some((url.host()?.to_owned(), url.port_or_known_default()?))
}

/// A host without brackets, lower-case, as patterns see it.
fn bare(host: &url::Host<String>) -> String {
    match host {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    }
}

/// The kind of an address that needs consent, or `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    Some(match () {
        _ if o[0] == 0 => "unspecified",
        _ if o[0] == 127 => "loopback",
        _ if in_net([10, 0, 0, 0], 8)
            || in_net([172, 16, 0, 0], 12)
            || in_net([192, 168, 0, 0], 16) =>
        {
            "private address"
        }
        _ if in_net([169, 254, 0, 0], 16) => "link-local",
        _ if in_net([100, 64, 0, 0], 10) => "carrier-grade NAT",
        _ if ip == Ipv4Addr::BROADCAST => "broadcast",
        _ if in_net([224, 0, 0, 0], 4) => "multicast",
        _ if in_net([240, 0, 0, 0], 4) => "reserved",
        _ if in_net([192, 0, 0, 0], 24) => "IETF protocol assignments",
        _ if in_net([198, 18, 0, 0], 15) => "benchmarking",
        _ if in_net([192, 0, 2, 0], 24)
            || in_net([198, 51, 100, 0], 24)
            || in_net([203, 0, 113, 0], 24) =>
        {
            "documentation"
        }
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d):
    // the IPv4 address inside decides.
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002:a.b.c.d::/48).
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xfe00 == 0xfc00 => "private address",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        _ => return None,
    })
}

/// The process's DNS resolver for upstream clients: the system resolver, minus the
/// addresses the policy forbids for the name asked.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<Policy>,
}

impl PolicyResolver {
    /// A resolver that applies `policy`.
    pub fn new(policy: Arc<Policy>) -> PolicyResolver {
        PolicyResolver { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = policy.filter(&host, addrs)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The policy refusal somewhere in an error's source chain (the resolver's, inside
/// reqwest's connect error), if any.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a PolicyError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<PolicyError>() {
            return Some(p);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let cfg = crate::config::parse_text(yaml).unwrap();
        let settings = crate::config::resolve(
            Some((cfg, yaml.to_owned(), "c.yaml".into())),
            crate::config::Overrides::default(),
        )
        .unwrap();
        Policy::new(&settings)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(classify(ip(private)).is_some(), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(classify(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn default_policy() {
        let p = policy("");
        assert!(p.check_named("quay.io", Scheme::Https).is_ok());
        for bad in [
            "127.0.0.1:5000",
            "[::ffff:127.0.0.1]:5000",
            "[::1]:5000",
            "10.0.0.5",
            "169.254.169.254",
            "0x7f.1:5000",
            "2130706433:5000",
        ] {
            let e = p.check_named(bad, Scheme::Https).unwrap_err();
            assert!(matches!(e, PolicyError::Address { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("upstreams.allow"), "{e}");
        }
        let e = p
            .filter("localhost", vec!["127.0.0.1:0".parse().unwrap()])
            .unwrap_err();
        assert!(e.to_string().contains("127.0.0.1 (loopback)"), "{e}");
        let mixed = vec!["127.0.0.1:0".parse().unwrap(), "8.8.8.8:0".parse().unwrap()];
        assert_eq!(p.filter("x.example", mixed).unwrap().len(), 1);
    }

    #[test]
    fn docker_hub_as_default_namespace_gets_no_private_consent() {
        let private = || vec!["10.0.0.5:0".parse().unwrap()];
        let p = policy("");
        assert!(p.check_named("docker.io", Scheme::Https).is_ok());
        let e = p.filter("registry-1.docker.io", private()).unwrap_err();
        assert!(e.to_string().contains("10.0.0.5 (private address)"), "{e}");
        // An explicit defaultNs elsewhere, or a registries entry, is the operator's consent.
        let p = policy("defaultNs: registry.corp.example\n");
        assert!(p.filter("registry.corp.example", private()).is_ok());
        let p = policy("registries:\n- name: docker.io\n");
        assert!(p.filter("registry-1.docker.io", private()).is_ok());
    }

    #[test]
    fn consent_is_per_exact_socket_for_literals() {
        let p = policy(
            "registries:\n- name: 127.0.0.1:5000\n  scheme: http\n- name: reg.lab:8443\n  redirectHosts: [\"blobs.lab\", \"10.9.*\"]\n",
        );
        assert!(p.check_named("127.0.0.1:5000", Scheme::Http).is_ok());
        assert!(p.check_named("127.0.0.1:5001", Scheme::Https).is_err());
        let lo = vec!["127.0.0.1:0".parse().unwrap()];
        assert!(p.filter("reg.lab", lo.clone()).is_ok());
        assert!(p.filter("blobs.lab", lo.clone()).is_ok());
        assert!(p.filter("other.lab", lo).is_err());
        let hop = |u: &str| reqwest::Url::parse(u).unwrap();
        let lab = hop("https://reg.lab:8443");
        let own: Vec<HostPattern> = vec![HostPattern::parse("10.9.*").unwrap()];
        assert!(p.check_hop(&hop("http://10.9.0.1/x"), &own, &lab).is_ok());
        assert!(p.check_hop(&hop("http://10.9.0.1/x"), &[], &lab).is_err());
        assert!(
            p.check_hop(&hop("http://127.0.0.1:5000/x"), &[], &lab)
                .is_ok()
        );
        assert!(
            p.check_hop(&hop("http://127.0.0.1:6000/x"), &[], &lab)
                .is_err()
        );
        assert!(
            p.check_hop(&hop("https://s3.amazonaws.com/x"), &[], &lab)
                .is_ok()
        );
        // The registry's own address, another port: the registry's consent.
        let local = hop("http://127.0.0.1:5000");
        assert!(
            p.check_hop(&hop("http://127.0.0.1:6000/x"), &[], &local)
                .is_ok()
        );
        assert!(
            p.check_hop(&hop("http://127.0.0.2:5000/x"), &[], &local)
                .is_err()
        );
    }

    #[test]
    fn allow_and_deny() {
        let p = policy(
            "defaultNs: quay.io\nregistries:\n- name: ghcr.io\nupstreams:\n  allow: [configured, {host: \"*.corp.example\", privateAddresses: true}]\n  deny: [\"bad.corp.example\"]\n",
        );
        assert!(p.check_named("ghcr.io", Scheme::Https).is_ok());
        assert!(p.check_named("quay.io", Scheme::Https).is_ok());
        assert!(matches!(
            p.check_named("docker.io", Scheme::Https),
            Err(PolicyError::NotAllowed { .. })
        ));
        assert!(p.check_named("a.corp.example:5000", Scheme::Https).is_ok());
        // A registries entry passes any allow list; defaultNs only with `configured`.
        let q = policy(
            "defaultNs: quay.io\nregistries:\n- name: ghcr.io\nupstreams:\n  allow: [\"*.corp.example\"]\n  deny: [\"quay.io\"]\n",
        );
        assert!(q.check_named("ghcr.io", Scheme::Https).is_ok());
        assert!(q.check_named("x.corp.example", Scheme::Https).is_ok());
        assert!(q.check_named("docker.io", Scheme::Https).is_err());
        assert!(matches!(
            q.check_named("quay.io", Scheme::Https),
            Err(PolicyError::Denied { .. })
        ));
        let lo = vec!["10.0.0.1:0".parse().unwrap()];
        assert!(p.filter("a.corp.example", lo.clone()).is_ok());
        assert!(matches!(
            p.check_named("bad.corp.example", Scheme::Https),
            Err(PolicyError::Denied { .. })
        ));
        assert!(p.filter("bad.corp.example", lo).is_err());
        let hop = reqwest::Url::parse("https://bad.corp.example/x").unwrap();
        let reg = reqwest::Url::parse("https://bad.corp.example").unwrap();
        assert!(p.check_hop(&hop, &[], &reg).is_err());
    }

    #[test]
    fn ipv4_literal_patterns_consent() {
        let p =
            policy("upstreams: {allow: [\"*\", {host: \"127.0.0.*\", privateAddresses: true}]}\n");
        assert!(p.check_named("127.0.0.1:5000", Scheme::Https).is_ok());
        assert!(p.check_named("10.0.0.1:5000", Scheme::Https).is_err());
        assert!(
            p.check_named("[::ffff:127.0.0.1]:5000", Scheme::Https)
                .is_err()
        );
    }

    #[test]
    fn refusal_is_found_in_a_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] PolicyError);
        let e = Outer(PolicyError::NotAllowed { host: "x".into() });
        assert!(refusal(&e).is_some());
    }
}
