//! Frames put on the wire as they are, as a hostile host on the segment
//! would: a packet socket, a gratuitous ARP, and the MAC of an interface.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};

use crate::netns::Netns;

/// Writes each frame (Ethernet header included) onto `iface` in `ns` as it
/// is, through a packet socket: how a hostile host on the same segment puts
/// forged packets on the wire. A bounded number of frames, sent once each.
pub fn send_frames(ns: &Netns, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    ensure!(
        frames.len() <= 1000,
        "send_frames sends at most 1000 frames"
    );
    let iface = iface.to_string();
    ns.enter(move || -> Result<()> {
        let name = std::ffi::CString::new(iface.clone())?;
        // SAFETY: a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface}");
        // SAFETY: plain socket creation; protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: we own the descriptor just created; OwnedFd closes it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        for frame in frames {
            ensure!(frame.len() >= 14, "a frame needs its Ethernet header");
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: buffer and address are valid for the call's duration.
            let sent = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            ensure!(
                sent == frame.len() as isize,
                "sending a frame on {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

/// A gratuitous ARP reply, broadcast from `mac`, claiming `addr` for it:
/// how a container takes over a sibling's address.
pub fn gratuitous_arp(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend(mac);
    arp.extend(crate::hex("0806 0001 0800 06 04 0002"));
    arp.extend(mac);
    arp.extend(addr.octets());
    arp.extend([0xff; 6]);
    arp.extend(addr.octets());
    arp
}

/// An ARP request broadcast from Ethernet source `frame_source`, asking for
/// `target` on behalf of `sender` (its MAC and address): a request for a
/// host address teaches that host the sender, and any frame teaches the
/// bridge where `frame_source` is. A sender address of 0.0.0.0 is a probe.
pub fn arp_request(
    frame_source: [u8; 6],
    sender: ([u8; 6], Ipv4Addr),
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend(frame_source);
    arp.extend(crate::hex("0806 0001 0800 06 04 0001"));
    arp.extend(sender.0);
    arp.extend(sender.1.octets());
    arp.extend([0; 6]);
    arp.extend(target.octets());
    arp
}

/// The MAC address of `iface` in `ns`, as 6 bytes.
pub fn mac_of(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let text = ns.run("cat", &[&format!("/sys/class/net/{iface}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address of {iface}: {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address of {iface} is not 6 bytes: {text}"))
}
