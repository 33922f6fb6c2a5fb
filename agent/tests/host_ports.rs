//! `host_ports` against real sockets of this process: a TCP listener and an unconnected UDP
//! socket (IPv4 and IPv6) are in the reading while they exist and gone once dropped; a TCP
//! connection's local port and a connected UDP socket's are not; the status leaves out the
//! ports its spec's containers publish.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use steward_agent::host_ports;
use steward_proto::NodeSpec;

fn port(a: std::io::Result<SocketAddr>) -> u16 {
    a.unwrap().port()
}

#[test]
fn listening_and_bound_ports_are_read_until_closed() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_port, udp_port) = (port(tcp.local_addr()), port(udp.local_addr()));
    // IPv6 where the host has it (a namespace without IPv6 binds nothing here).
    let tcp6 = TcpListener::bind("[::1]:0").ok();
    let udp6 = UdpSocket::bind("[::1]:0").ok();
    let v6: Vec<u16> = (tcp6.iter().map(|s| port(s.local_addr())))
        .chain(udp6.iter().map(|s| port(s.local_addr())))
        .collect();
    // A connection: the client's local port is no listener's.
    let client = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let client_port = port(client.local_addr());
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(udp.local_addr().unwrap()).unwrap();
    let connected_port = port(connected.local_addr());

    let ports = host_ports::read().unwrap();
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
    for p in [tcp_port, udp_port].iter().chain(&v6) {
        assert!(ports.contains(p), "{p} missing from {ports:?}");
    }
    assert!(!ports.contains(&client_port), "{client_port} in {ports:?}");
    assert!(
        !ports.contains(&connected_port),
        "{connected_port} in {ports:?}"
    );
    assert!(
        host_ports::in_use().contains(&tcp_port),
        "in_use reads the same"
    );

    drop((tcp, udp, tcp6, udp6, client, connected));
    let after = host_ports::read().unwrap();
    for p in [tcp_port, udp_port].iter().chain(&v6) {
        assert!(
            !after.contains(p),
            "{p} still in {after:?} after it was closed"
        );
    }
}

/// The status's reading (`in_use_under`) leaves out a port the spec's containers publish and
/// keeps the others.
#[tokio::test]
async fn ports_the_spec_publishes_are_left_out() {
    let ours = TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = TcpListener::bind("127.0.0.1:0").unwrap();
    let (ours_port, theirs_port) = (port(ours.local_addr()), port(theirs.local_addr()));
    let spec: NodeSpec = serde_json::from_value(serde_json::json!({"containers": [
        {"name": "web", "image": "busybox", "ports": [format!("{ours_port}:80")]}
    ]}))
    .unwrap();
    let ports = host_ports::in_use_under(&spec).await;
    assert!(!ports.contains(&ours_port), "{ours_port} in {ports:?}");
    assert!(
        ports.contains(&theirs_port),
        "{theirs_port} missing from {ports:?}"
    );
}
