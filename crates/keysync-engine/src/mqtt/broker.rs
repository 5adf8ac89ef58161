//! Where the broker is: `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS).

/// A broker address, its credentials, and whether to speak TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerUrl {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for BrokerUrl {
    /// The URL without its password, as the Link pane and the logs show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{}@", super::super::radio::printable(u)))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{user}{host}:{}", self.port)
    }
}

/// Why a text is not a broker URL, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} is not a broker URL: use mqtt://host[:port] or mqtts://host[:port]")]
    Scheme(String),
    #[error("a broker URL has no path: the topic root is --mqtt-root")]
    Path,
    #[error("unclosed [ in {0:?}")]
    UnclosedBracket(String),
    #[error("unexpected {0:?} after the address")]
    AfterAddress(String),
    #[error("{0:?} is not a port")]
    Port(String),
    #[error("the broker URL names no host")]
    NoHost,
    #[error("a % in the URL's credentials is not followed by two hex digits")]
    Escape,
    #[error("the URL's credentials are not UTF-8")]
    NotUtf8,
}

impl BrokerUrl {
    /// Reads a broker URL; the error says what is wrong in words.
    pub fn parse(s: &str) -> Result<Self, BrokerUrlError> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(BrokerUrlError::Scheme(s.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(BrokerUrlError::Path);
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)?), Some(decode(pass)?)),
                None => (Some(decode(u)?), None),
            },
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| BrokerUrlError::UnclosedBracket(hostport.to_owned()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => port(p)?,
                None if after.is_empty() => default_port,
                None => return Err(BrokerUrlError::AfterAddress(after.to_owned())),
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), port(p)?),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost);
        }
        Ok(Self {
            host,
            port,
            tls,
            user,
            password,
        })
    }
}

fn port(p: &str) -> Result<u16, BrokerUrlError> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| BrokerUrlError::Port(p.to_owned()))
}

/// Undoes the `%XX` escapes a user or password needs in a URL (`@`, `:`, `/`).
fn decode(s: &str) -> Result<String, BrokerUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(BrokerUrlError::Escape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BrokerUrlError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_port_tls_and_credentials() {
        let u = BrokerUrl::parse("mqtts://gw:p%40ss@broker.example:8884").expect("valid");
        assert_eq!(u.host, "broker.example");
        assert_eq!(u.port, 8884);
        assert!(u.tls);
        assert_eq!(u.user.as_deref(), Some("gw"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.to_string(), "mqtts://gw@broker.example:8884");
        let plain = BrokerUrl::parse("mqtt://127.0.0.1").expect("valid");
        assert_eq!((plain.port, plain.tls, plain.user), (1883, false, None));
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]:1884").expect("v6").host,
            "::1"
        );
    }

    #[test]
    fn refuses_other_schemes_paths_and_bad_ports() {
        for bad in [
            "http://x",
            "x:1883",
            "mqtt://x/msh",
            "mqtt://x:0",
            "mqtt://x:99999",
            "mqtt://",
            "mqtt://u:%zz@x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let u = BrokerUrl::parse("mqtt://u:secret@h").expect("valid");
        assert!(!format!("{u} {u:?}").contains("secret"));
    }
}
