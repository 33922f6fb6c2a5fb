//! Port mappings: the typed parser for `[host_ip:][host_port:]container_port[/tcp|udp]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `[host_ip:][host_port:]container_port[/tcp|udp]`.
///
/// No `host_port` means Docker picks one (on `host_ip` when given); no `host_ip` means every
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    /// The canonical form: `[::1]:8080:80/tcp`, `127.0.0.1::53/udp`, `8080:80/tcp`, `80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        match self.host_port {
            Some(p) => write!(f, "{p}:")?,
            None if self.host_ip.is_some() => f.write_str(":")?,
            None => {}
        }
        write!(f, "{}/{}", self.container_port, self.protocol)
    }
}

const PORT_HELP: &str =
    "expected [host_ip:][host_port:]container_port[/tcp|udp], e.g. 8080:80/tcp or [::1]:8080:80";

/// Parses a port mapping such as `8080:80/tcp`, `127.0.0.1:8080:80`, `[::1]:8080:80/udp`, `80`.
/// A host address without a host port may be written `127.0.0.1::80` or `127.0.0.1:80`.
pub fn parse_port(s: &str) -> Result<PortMapping, String> {
    if s.is_empty() {
        return Err(format!("port mapping is empty; {PORT_HELP}"));
    }
    if s.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(format!(
            "port mapping {s:?} contains whitespace or NUL; {PORT_HELP}"
        ));
    }
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((rest, proto)) => (rest, parse_protocol(proto)?),
        None => (s, Protocol::Tcp),
    };
    let too_many = || {
        format!(
            "port mapping {s:?} has too many ':'; IPv6 host addresses go in brackets, \
             e.g. [::1]:8080:80"
        )
    };
    let (host_ip, ports): (Option<IpAddr>, Vec<&str>) = if let Some(after) = rest.strip_prefix('[')
    {
        let (ip, tail) = after.split_once(']').ok_or_else(|| {
            format!("port mapping {s:?} has '[' without ']'; write IPv6 addresses as [::1]:8080:80")
        })?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in port mapping {s:?} is not an IPv6 address"))?;
        let tail = tail
            .strip_prefix(':')
            .ok_or_else(|| format!("port mapping {s:?} needs ':' after ']', e.g. [::1]:8080:80"))?;
        let ports: Vec<&str> = tail.split(':').collect();
        if ports.len() > 2 {
            return Err(too_many());
        }
        (Some(IpAddr::V6(ip)), ports)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.as_slice() {
            [_] => (None, parts),
            [first, container] => match first.parse::<Ipv4Addr>() {
                Ok(ip) => (Some(IpAddr::V4(ip)), vec![*container]),
                Err(_) => (None, parts),
            },
            [ip, host, container] => {
                let ip: Ipv4Addr = ip.parse().map_err(|_| {
                    format!(
                        "{ip:?} in port mapping {s:?} is not an IPv4 address (IPv6 addresses go \
                         in brackets); {PORT_HELP}"
                    )
                })?;
                (Some(IpAddr::V4(ip)), vec![*host, *container])
            }
            _ => return Err(too_many()),
        }
    };
    let (host_port, container) = match ports.as_slice() {
        [container] => (None, *container),
        [host, container] if host.is_empty() && host_ip.is_some() => (None, *container),
        [host, container] => (Some(port_number(host, "host port", s)?), *container),
        _ => return Err(too_many()),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port: port_number(container, "container port", s)?,
        protocol,
    })
}

fn parse_protocol(p: &str) -> Result<Protocol, String> {
    match p {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "" => Err("protocol is missing after '/'; use tcp or udp".into()),
        other => Err(format!(
            "protocol {other:?} is not supported; use tcp or udp"
        )),
    }
}

/// Parses a port number 1–65535; `what` and `whole` only go into the error.
pub(super) fn port_number(p: &str, what: &str, whole: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err(format!("{what} is missing in {whole:?}; {PORT_HELP}"));
    }
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if p.split_once('-')
        .is_some_and(|(a, b)| digits(a) && digits(b))
    {
        return Err(format!(
            "port ranges such as {p:?} are not supported; list each port separately"
        ));
    }
    if !digits(p) {
        return Err(format!(
            "{what} {p:?} in {whole:?} is not a number; {PORT_HELP}"
        ));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {p} is out of range 1-65535")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_port_forms() {
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        type Case = (&'static str, Option<IpAddr>, Option<u16>, u16, Protocol);
        let cases: &[Case] = &[
            ("80", None, None, 80, Protocol::Tcp),
            ("8080:80", None, Some(8080), 80, Protocol::Tcp),
            ("8080:80/tcp", None, Some(8080), 80, Protocol::Tcp),
            ("53:53/udp", None, Some(53), 53, Protocol::Udp),
            (
                "127.0.0.1:8080:80",
                v4("127.0.0.1"),
                Some(8080),
                80,
                Protocol::Tcp,
            ),
            ("127.0.0.1::80", v4("127.0.0.1"), None, 80, Protocol::Tcp),
            ("127.0.0.1:80", v4("127.0.0.1"), None, 80, Protocol::Tcp),
            (
                "[::1]:8080:80",
                Some("::1".parse().unwrap()),
                Some(8080),
                80,
                Protocol::Tcp,
            ),
            (
                "[::]::80/udp",
                Some("::".parse().unwrap()),
                None,
                80,
                Protocol::Udp,
            ),
            (
                "[fd00::1]:80",
                Some("fd00::1".parse().unwrap()),
                None,
                80,
                Protocol::Tcp,
            ),
            ("65535:1", None, Some(65535), 1, Protocol::Tcp),
        ];
        for (s, ip, host, container, proto) in cases {
            let m = parse_port(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                m,
                PortMapping {
                    host_ip: *ip,
                    host_port: *host,
                    container_port: *container,
                    protocol: *proto
                },
                "{s}"
            );
            // The canonical form parses back to the same mapping.
            assert_eq!(parse_port(&m.to_string()).unwrap(), m, "{s} -> {m}");
        }
    }

    #[test]
    fn parse_port_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("0", "port 0 is out of range 1-65535"),
            ("70000:80", "port 70000 is out of range 1-65535"),
            ("80/sctp", "protocol \"sctp\" is not supported"),
            ("80/", "protocol is missing"),
            ("80/TCP", "not supported"),
            ("http", "is not a number"),
            (":80", "host port is missing"),
            ("8080:", "container port is missing"),
            ("8000-8010:80", "port ranges"),
            ("::1:8080:80", "IPv6 host addresses go in brackets"),
            ("1.2.3:8080:80", "is not an IPv4 address"),
            ("[::1:8080:80", "'[' without ']'"),
            ("[nope]:8080:80", "is not an IPv6 address"),
            ("[::1]8080:80", "needs ':' after ']'"),
            ("[::1]:1:2:3", "too many ':'"),
            ("80 /tcp", "whitespace"),
        ];
        for (s, want) in cases {
            let err = parse_port(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }
}
