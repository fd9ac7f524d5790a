//! TCP_NODELAY on the pool's Postgres sockets.
//!
//! sqlx 0.9.0 no longer sets TCP_NODELAY on the sockets it opens (launchbadge/sqlx#4335; fixed
//! upstream after 0.9.0, which is the newest release). Without it, a statement whose message does
//! not fit the socket's send buffer in one write (a batched insert of a few hundred rows) leaves
//! its tail waiting for the server's delayed ACK: about 40 ms per such statement on Linux, which
//! was most of a backfill page's time. After each new connection is made, every TCP socket of
//! this process whose peer port is the database's gets the option (idempotent; other sockets are
//! left alone). Remove this module once sqlx sets the option itself again.

/// Sets TCP_NODELAY on this process's TCP sockets connected to `port`. Returns how many it set.
/// Errors on single descriptors are skipped: one may close while we look.
#[cfg(target_os = "linux")]
pub fn apply(port: u16) -> usize {
    use std::os::fd::BorrowedFd;

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open when listed and is only borrowed for the two calls below.
        // Should it close and be reused meanwhile, the calls act on whatever descriptor has the
        // number: `getpeername` and `setsockopt(TCP_NODELAY)` on a socket (ENOTSOCK on anything
        // else), which touch no memory of ours.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let peer_port = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .map(|addr| addr.port());
        if peer_port == Some(port) && socket.set_tcp_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(not(target_os = "linux"))]
pub fn apply(_port: u16) -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sets_the_option_on_sockets_to_the_port_only() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let to_db = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let elsewhere = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        assert!(!to_db.nodelay().expect("nodelay"));
        assert!(super::apply(port) >= 1);
        assert!(to_db.nodelay().expect("nodelay"));
        assert!(!elsewhere.nodelay().expect("nodelay"));
    }
}
