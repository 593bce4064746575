//! systemd's readiness protocol (sd_notify): one datagram per state change
//! to the socket in `NOTIFY_SOCKET`, a path or an abstract name (`@...`).
//! Without the variable (not under a `Type=notify` unit) nothing is sent.

use std::os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr, unix::net::UnixDatagram};

use log::debug;

/// Sends `state` (`READY=1`, `STATUS=...`, `STOPPING=1`) to the service
/// manager, if there is one. A manager that went away is not an error.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let address = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = sent {
        debug!("notifying the service manager at {target}: {e}");
    }
}
