//! Which browser origins may call a node's HTTP and WebSocket endpoints (`--rpc-cors`,
//! `--api-cors`), as Substrate's `--rpc-cors`: a web page the operator visits must not be able
//! to spend the node's credits or reach its operator methods on loopback.
//!
//! A request without an `Origin` header does not come from a browser page (curl, the `openai`
//! client, another server) and is not concerned. A browser sends `Origin` on every
//! cross-origin request and on WebSocket upgrades; the node answers a disallowed one with 403.

/// Substrate's default list: local pages and polkadot.js apps.
pub const DEFAULT_ORIGINS: [&str; 5] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://polkadot.js.org",
];

/// The origins allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`all`).
    All,
    /// These; `scheme://host:*` allows every port of the host.
    List(Vec<String>),
}

impl Default for Origins {
    fn default() -> Self {
        Self::List(DEFAULT_ORIGINS.iter().map(|s| s.to_string()).collect())
    }
}

impl Origins {
    /// Parses a flag's value: `all`, `none`, or origins separated by commas
    /// (`http://localhost:*,https://example.com`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(Self::All),
            "none" => return Ok(Self::List(Vec::new())),
            _ => {}
        }
        let list: Vec<String> = s.split(',').map(|o| o.trim().to_string()).collect();
        for o in &list {
            let rest = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(format!(
                    "'{o}' is not an origin: expected scheme://host[:port|:*], all or none"
                ));
            }
        }
        Ok(Self::List(list))
    }

    /// Whether a request with this `Origin` header (`None`: no header) may be served.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        match self {
            Self::All => true,
            Self::List(list) => list.iter().any(|p| match p.strip_suffix(":*") {
                Some(host) => {
                    origin == host
                        || origin.strip_prefix(host).and_then(|r| r.strip_prefix(':')).is_some_and(
                            |port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
                        )
                }
                None => origin == p,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_allows_local_pages_and_polkadot_js_only() {
        let o = Origins::default();
        for ok in [
            None,
            Some("http://localhost:3000"),
            Some("http://127.0.0.1:8080"),
            Some("http://localhost"),
            Some("https://polkadot.js.org"),
        ] {
            assert!(o.allows(ok), "{ok:?}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://localhost:80x",
            "http://localhost:",
            "https://polkadot.js.org.evil",
            "null",
        ] {
            assert!(!o.allows(Some(bad)), "{bad}");
        }
        assert!(Origins::All.allows(Some("http://evil.example")));
        assert!(!Origins::parse("none").unwrap().allows(Some("http://localhost:1")));
        let custom = Origins::parse("https://chat.example, http://10.0.0.2:*").unwrap();
        assert!(custom.allows(Some("https://chat.example")));
        assert!(custom.allows(Some("http://10.0.0.2:8080")));
        assert!(!custom.allows(Some("http://localhost:1")));
        assert!(Origins::parse("chat.example").is_err());
        assert!(Origins::parse("https://chat.example/path").is_err());
    }
}
