//! Who the members are, and the [`Topology`] every request reads.
//!
//! Membership sources (a static list in `static_list`, Kubernetes EndpointSlices in
//! `kubernetes`) only ever call [`TopologyHandle::update`] with the full member list; ring
//! configurations learned from the servers come in through [`TopologyHandle::adopt`].
//! `topology` builds the immutable view from both and swaps it in atomically.

pub mod kubernetes;
pub mod static_list;
mod topology;

use std::fmt;

use http::Uri;
use http::uri::{Authority, Scheme};

pub use topology::{Backend, Topology, TopologyHandle};

/// A member as a membership source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name placed on the ring (seed: `host:port`; Kubernetes: the pod's hostname).
    pub name: String,
    pub url: BackendUrl,
}

/// The scheme and authority of a server: the only part of an outgoing URL that does not come
/// from the gateway's own fixed paths. Holding no path makes it impossible for a request to
/// steer the gateway elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    authority: Authority,
    /// `host:port`, computed once: the link looks its connection up by it on every request.
    host_port: String,
}

impl BackendUrl {
    /// Parses `http://host:port` (a trailing `/` allowed). Only plain HTTP: servers sit on a
    /// private network beside the gateway.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid URL '{s}': {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("invalid URL '{s}': only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("invalid URL '{s}': no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!("invalid URL '{s}': credentials are not supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("invalid URL '{s}': no path or query allowed"));
        }
        let host_port = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(BackendUrl {
            authority,
            host_port,
        })
    }

    /// `host:port` to connect to (port 80 when the URL names none).
    pub fn host_port(&self) -> &str {
        &self.host_port
    }

    /// The URL of `path_and_query` (which must start with `/`) on this server.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_hold_only_scheme_and_authority() {
        let url = BackendUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            url.join("/get/a%2Fb?version=1").unwrap().to_string(),
            "http://127.0.0.1:8080/get/a%2Fb?version=1"
        );
        for bad in [
            "https://x:1",
            "x:1",
            "http://x:1/api",
            "http://u:p@x:1",
            "http://x:1/?a=b",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
