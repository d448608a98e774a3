//! Close-on-exec for the database sockets a C client library opened without it.
//!
//! Why: MariaDB's Connector/C (what Diesel's `mysql` backend links) creates its socket
//! without `FD_CLOEXEC`, so every process this one spawns (a worker's `--exec` job, a
//! test's `jobdb work`) inherits every open MySQL connection. The child never uses them, but
//! while it lives the server does not see a connection of a crashed parent close: that
//! connection's session, and any transaction and row locks it held, outlive the parent for
//! as long as the job's command runs. libpq and SQLite already open their descriptors
//! close-on-exec; Rust's standard library does so for everything it opens.
//!
//! Diesel gives no access to the client's handle, so the socket is found from outside: the
//! server tells the connection's own client address (see `pool/mysql.rs`), and this module
//! finds the descriptor with that local address among the process's open ones
//! (`/proc/self/fd`) and sets the flag on it. A `fork` + `exec` in another thread between
//! the connect and this sweep still inherits that one socket; nothing closes that gap short
//! of the library opening it with `SOCK_CLOEXEC`.

/// Which sockets are the connection's: what the server saw it connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientEnd {
    /// A TCP connection from this local port (IPv4 or IPv6).
    Tcp(u16),
    /// A Unix-domain connection to the server's socket at this path (its local end has no
    /// name, so every connection to that path is taken: all are this server's clients).
    Unix(String),
}

/// Sets `FD_CLOEXEC` on each open socket of this process at `end`; returns how many it
/// found. Not Linux: nothing is found (there is no `/proc/self/fd` to look in).
pub(crate) fn close_on_exec(end: &ClientEnd) -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut marked = 0;
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if linux::is_at(fd, end) {
                linux::set_cloexec(fd)?;
                marked += 1;
            }
        }
        Ok(marked)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = end;
        Ok(0)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::ClientEnd;

    /// Whether `fd` is a socket at `end`. A descriptor that closed meanwhile (the listing's
    /// own, another thread's) is simply not one.
    pub(super) fn is_at(fd: libc::c_int, end: &ClientEnd) -> bool {
        // SAFETY: fstat on any descriptor number only fills `st` or fails with EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return false;
        }
        match end {
            ClientEnd::Tcp(port) => {
                address(fd, libc::getsockname).is_some_and(|a| tcp_port(&a) == Some(*port))
            }
            ClientEnd::Unix(path) => address(fd, libc::getpeername)
                .is_some_and(|a| unix_path(&a).is_some_and(|p| p == path.as_bytes())),
        }
    }

    type AddrFn =
        unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

    /// The socket's local (`getsockname`) or peer (`getpeername`) address.
    fn address(fd: libc::c_int, which: AddrFn) -> Option<libc::sockaddr_storage> {
        // SAFETY: the kernel writes at most `len` bytes into the zeroed storage.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&addr)).ok()?;
        let got = unsafe { which(fd, (&raw mut addr).cast(), &mut len) };
        (got == 0).then_some(addr)
    }

    fn tcp_port(addr: &libc::sockaddr_storage) -> Option<u16> {
        match libc::c_int::from(addr.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in>()) };
                Some(u16::from_be(a.sin_port))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>()) };
                Some(u16::from_be(a.sin6_port))
            }
            _ => None,
        }
    }

    fn unix_path(addr: &libc::sockaddr_storage) -> Option<&[u8]> {
        if libc::c_int::from(addr.ss_family) != libc::AF_UNIX {
            return None;
        }
        // SAFETY: the family says the storage holds a sockaddr_un.
        let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_un>()) };
        // SAFETY: sun_path is a C char array inside `a`; it is read as bytes, up to its NUL.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(a.sun_path.as_ptr().cast::<u8>(), a.sun_path.len())
        };
        Some(bytes.split(|&b| b == 0).next().unwrap_or(&[]))
    }

    pub(super) fn set_cloexec(fd: libc::c_int) -> std::io::Result<()> {
        // SAFETY: fcntl's F_GETFD / F_SETFD only read and set the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn cloexec(fd: libc::c_int) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    fn clear_cloexec(fd: libc::c_int) {
        // SAFETY: as above; clears the flag on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        assert!(!cloexec(fd));
    }

    /// A socket as Connector/C leaves it (the flag cleared) is found by its local port and
    /// marked; a socket at another port is left as it was.
    #[test]
    fn the_socket_at_the_local_port_is_marked_and_no_other() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let other = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        clear_cloexec(ours.as_raw_fd());
        clear_cloexec(other.as_raw_fd());
        let port = ours.local_addr().unwrap().port();
        assert_eq!(close_on_exec(&ClientEnd::Tcp(port)).unwrap(), 1);
        assert!(cloexec(ours.as_raw_fd()));
        assert!(!cloexec(other.as_raw_fd()));
    }

    /// A Unix-domain connection is found by the path it connected to.
    #[test]
    fn a_unix_socket_is_found_by_its_peer_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ours = std::os::unix::net::UnixStream::connect(&path).unwrap();
        clear_cloexec(ours.as_raw_fd());
        let end = ClientEnd::Unix(path.to_str().unwrap().to_owned());
        assert_eq!(close_on_exec(&end).unwrap(), 1);
        assert!(cloexec(ours.as_raw_fd()));
    }
}
