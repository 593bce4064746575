//! Names derived from an attachment (network, container id, interface),
//! the specification's key for a plugin's state. Derived, not stored, so a
//! DEL finds the host end of the veth even when the container, its
//! namespace and every record of the ADD are gone.

/// A stable hash of the attachment, as 16 hex digits (FNV-1a: the same in
/// every build and version, unlike std's hasher).
pub fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [network, container_id, ifname].join("\0").bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The host end of the attachment's veth: `fv` and 12 hex digits of its
/// key (14 bytes, within the 15 of an interface name).
pub fn port_name(key: &str) -> String {
    format!("fv{}", &key[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_tell_attachments_apart() {
        // Literal: a change of the hash would orphan every existing port.
        assert_eq!(attachment_key("fan", "c1", "eth0"), "76d390d7f82b7ebf");
        assert_ne!(
            attachment_key("fan", "c1", "eth0"),
            attachment_key("fan", "c1", "eth1")
        );
        assert_ne!(
            attachment_key("fan", "c1", "eth0"),
            attachment_key("fan2", "c1", "eth0")
        );
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            attachment_key("n", "ab", "c"),
            attachment_key("n", "a", "bc")
        );
        let port = port_name(&attachment_key("fan", "c1", "eth0"));
        assert_eq!(port, "fv76d390d7f82b");
        assert!(port.len() <= 15);
    }
}
