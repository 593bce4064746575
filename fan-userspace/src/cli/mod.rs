//! The command line: clap types only.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use fan_common::plan::{AddrRange, Cidr};
use ipnetwork::IpNetwork;

#[derive(Parser)]
#[command(
    name = "fan-xdp",
    version,
    about = "Fan networking as an eBPF/XDP data plane"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// More logging; with `attach`, also turns on the eBPF programs' debug
    /// events, which `stats --watch -v` prints.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// A bpffs directory for pinned state instead of the host's /sys/fs/bpf.
    #[arg(long, global = true, env = "FAN_XDP_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The parent of the per-namespace directories for locks instead of /run/fan-xdp.
    #[arg(long, global = true, env = "FAN_XDP_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Where state that outlives a boot is kept (the DHCP leases) instead of /var/lib/fan-xdp.
    #[arg(long, global = true, env = "FAN_XDP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make this host a member of a fan: bridge, addresses, routes, NAT, programs.
    Attach(AttachArgs),
    /// Remove one fan (--overlay) or every fan of an interface, leaving nothing behind.
    Detach(DetachArgs),
    /// fanctl's spelling of attach: `up [OVERLAY] UNDERLAY [dhcp] [host-reserve N] [bridge NAME]`
    /// (OVERLAY defaults to 250.0.0.0/8), or `up -a`: every fan of the configuration not marked off.
    Up(UpArgs),
    /// fanctl's spelling of detach: `down [OVERLAY] UNDERLAY`, `down -a` (every fan the
    /// configuration names) or `down -e` (every fan attached here).
    Down(DownArgs),
    /// The fans attached in this network namespace, read from the pinned state.
    Show(ShowArgs),
    /// The host agent: keeps the fast path (endpoints, port programs, path MTU routes); attach starts it.
    Run(RunArgs),
    /// Make the agent resync now, and return when it has.
    Reload,
    /// Deliver an overlay address straight to one container (a `static` binding, kept by the agent).
    Bind(BindArgs),
    /// Remove a `static` binding (success if there was none).
    Unbind(UnbindArgs),
    /// Packet and byte counters per outcome, summed over CPUs.
    Stats(StatsArgs),
    /// Follow the programs' drops as they happen (and with --passes, samples of the packets they pass to the stack), from the agent.
    Monitor(MonitorArgs),
    /// Check what breaks fans in the field (agent, bypass, forwarding, rp_filter, a dropping FORWARD chain, defunct links, MTUs, programs in front) and say how to fix each.
    Doctor,
    /// Load every program on this kernel and report what the verifier said and which hooks exist.
    Check,
    /// Offline calculator: a host's slice, bridge and gateway, and where overlay addresses live.
    Map(MapArgs),
    /// Internal: mount bpffs in another mount namespace (used under `ip netns exec`).
    #[command(name = "__mount-bpffs", hide = true)]
    MountHelper { pid: String },
    /// Internal: write the man pages and shell completions, made from these
    /// definitions, under DIR (used by `cargo xtask install`).
    #[command(name = "__generate", hide = true)]
    Generate { dir: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Native XDP decapsulation; fails if the driver cannot run it.
    Xdp,
    /// TC ingress decapsulation.
    Tc,
    /// TC on veth (XDP there strips TSO from the peer), native XDP where the driver takes it, else TC.
    Auto,
}

/// The fan's wire format (`--type`, the `type` keyword).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FanType {
    /// IP-in-IP (protocol 4), the seed's and fanctl's default.
    #[default]
    Ipip,
    /// VXLAN over UDP, as Ubuntu's fan kernel and LXD's `bridge.mode=fan`
    /// networks send it: an Ethernet overlay, MTU the underlay's - 50.
    Vxlan,
}

impl FanType {
    /// As the command line, the configuration and `show` name it.
    pub const fn name(self) -> &'static str {
        match self {
            FanType::Ipip => "ipip",
            FanType::Vxlan => "vxlan",
        }
    }
}

impl From<FanType> for fan_common::Encap {
    fn from(fan_type: FanType) -> Self {
        match fan_type {
            FanType::Ipip => fan_common::Encap::Ipip,
            FanType::Vxlan => fan_common::Encap::Vxlan,
        }
    }
}

/// The largest VXLAN network identifier: it has 24 bits.
pub const MAX_VNI: u32 = fan_common::vxlan::VXLAN_VNI_MAX;

#[derive(Args, Clone)]
pub struct AttachArgs {
    /// The underlay interface.
    pub iface: String,
    /// The overlay prefix, e.g. 250.0.0.0/8.
    #[arg(long)]
    pub overlay: IpNetwork,
    /// The underlay prefix (default: the subnet of the interface's primary IPv4 address).
    #[arg(long)]
    pub underlay: Option<IpNetwork>,
    /// Slice bridge name (default: fan-<slice octets>, like fanctl).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Addresses at the start of the slice kept for the host.
    #[arg(long, default_value_t = 1)]
    pub host_reserve: u32,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// The wire format: ipip, or vxlan to join a fan of Ubuntu's kernel
    /// or LXD's `bridge.mode=fan` (decapsulates at TC: `--mode xdp` is refused).
    #[arg(long = "type", value_enum, default_value_t = FanType::Ipip)]
    pub fan_type: FanType,
    /// With --type vxlan: the VXLAN network identifier, 0 to 16777215
    /// (default: the overlay's network address >> 8, as LXD: 250.0.0.0/8 -> 16384000).
    #[arg(long, value_parser = parse_vni)]
    pub vni: Option<u32>,
    /// With --type vxlan: the UDP destination port, 1 to 65535 (default 8472,
    /// Linux's, which LXD's `dstport 0` selects).
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    /// Do not masquerade slice traffic leaving the overlay.
    #[arg(long)]
    pub no_nat: bool,
    /// Overlay MTU (default: underlay MTU - 20, or - 50 with --type vxlan).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Do not start the agent (`fan-xdp run`) where none runs: every packet
    /// then takes the bridge and the host's stack.
    #[arg(long)]
    pub no_agent: bool,
    /// Whether the fast path may skip the host's netfilter (FORWARD, NAT,
    /// conntrack) for fan traffic: auto turns it off where netfilter could act.
    #[arg(long, value_enum, default_value_t = Bypass::Auto)]
    pub bypass: Bypass,
    /// Serve DHCP on the slice bridge from the plan's DHCP range (dnsmasq,
    /// supervised by the agent).
    #[arg(long)]
    pub dhcp: bool,
    /// The address plan's DHCP range, FIRST-LAST (default: after the host
    /// reserve to the end of the slice's first half).
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    pub dhcp_range: Option<AddrRange>,
    /// The address plan's range for the CNI plugin, FIRST-LAST (default: the
    /// slice's fourth quarter without its broadcast address).
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    pub cni_range: Option<AddrRange>,
    /// The address plan's range for Docker's `--fixed-cidr`, one aligned
    /// prefix (default: the slice's third quarter).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub docker_cidr: Option<Cidr>,
    /// The underlay address to take, where the interface has several: the
    /// agent's own attaches name the one it follows. Not an option: an
    /// operator's attach takes the interface's first address in the underlay.
    #[arg(skip)]
    pub host: Option<std::net::Ipv4Addr>,
}

/// `FIRST-LAST`, both IPv4 addresses, FIRST not after LAST.
pub fn parse_range(text: &str) -> Result<AddrRange, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not FIRST-LAST (e.g. 250.0.28.2-250.0.28.127)"))?;
    let address = |part: &str| {
        part.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{part:?} in {text:?} is not an IPv4 address"))
    };
    let range = AddrRange::new(address(first)?, address(last)?);
    if range.is_empty() {
        return Err(format!("{text:?}: the first address comes after the last"));
    }
    Ok(range)
}

/// A VXLAN network identifier: a decimal number below 2^24.
pub fn parse_vni(text: &str) -> Result<u32, String> {
    match text.parse::<u64>() {
        Ok(vni) if vni <= u64::from(MAX_VNI) => Ok(vni as u32),
        Ok(vni) => Err(format!(
            "VNI {vni} does not fit VXLAN's 24 bits (at most {MAX_VNI})"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a VNI (a number from 0 to {MAX_VNI})"
        )),
    }
}

/// A UDP port: 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        _ => Err(format!("{text:?} is not a UDP port (1 to 65535)")),
    }
}

/// `BASE/LEN`, aligned (no host bits).
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (base, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not BASE/LEN (e.g. 250.0.28.128/26)"))?;
    let base: Ipv4Addr = base
        .parse()
        .map_err(|_| format!("{base:?} in {text:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{len:?} in {text:?} is not a prefix length"))?;
    Cidr::new(base, len).ok_or_else(|| {
        format!("{text:?} is not one aligned prefix (host bits set, or a length over 32)")
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bypass {
    /// On unless the host's netfilter could act on forwarded fan traffic.
    Auto,
    On,
    Off,
}

#[derive(Args, Clone)]
pub struct DetachArgs {
    pub iface: String,
    /// Only this fan; default: every fan of the interface.
    #[arg(long)]
    pub overlay: Option<IpNetwork>,
}

/// Where fanctl keeps its fans: `up -a`, `down -a` and `fan-xdp run` read it.
pub const FAN_CONFIG: &str = "/etc/network/fan";

#[derive(Args, Clone)]
pub struct UpArgs {
    /// Every fan of the configuration file not marked `off`.
    #[arg(short = 'a', long = "all", conflicts_with = "words")]
    pub all: bool,
    /// The configuration file (one fan per line, as fanctl's).
    #[arg(long, default_value = FAN_CONFIG)]
    pub config: PathBuf,
    /// As attach's: do not start the agent.
    #[arg(long)]
    pub no_agent: bool,
    /// `[OVERLAY] UNDERLAY [dhcp] [host-reserve N] [bridge NAME] [type ipip|vxlan] [vni N] [port P] [mode M] [mtu N] [no-nat] [bypass B]`;
    /// UNDERLAY is ADDR/LEN, IFACE/LEN or default.
    #[arg(required_unless_present = "all", value_name = "WORDS")]
    pub words: Vec<String>,
}

#[derive(Args, Clone)]
pub struct DownArgs {
    /// Every fan the configuration file names (also those marked `off`).
    #[arg(short = 'a', long = "all", conflicts_with_all = ["words", "existing"])]
    pub all: bool,
    /// Every fan attached in this network namespace.
    #[arg(short = 'e', long = "existing", conflicts_with = "words")]
    pub existing: bool,
    /// The configuration file, for -a.
    #[arg(long, default_value = FAN_CONFIG)]
    pub config: PathBuf,
    /// `[OVERLAY] UNDERLAY`, as given to `up` (keywords after them are accepted and ignored).
    #[arg(required_unless_present_any = ["all", "existing"], value_name = "WORDS")]
    pub words: Vec<String>,
}

#[derive(Args, Clone)]
pub struct BindArgs {
    /// The container's overlay address, in a slice of this host.
    pub address: Ipv4Addr,
    /// The container's MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    pub mac: String,
    /// The host end of the container's veth (default: the port the bridge learned the MAC on).
    #[arg(long)]
    pub port: Option<String>,
}

#[derive(Args, Clone)]
pub struct UnbindArgs {
    pub address: Ipv4Addr,
}

#[derive(Args, Clone)]
pub struct ShowArgs {
    #[arg(long)]
    pub json: bool,
    /// List the DHCP leases of each fan (address, MAC, port, expiry).
    #[arg(long)]
    pub leases: bool,
}

#[derive(Args, Clone)]
pub struct StatsArgs {
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the counters in Prometheus' text exposition format (for a
    /// node exporter's textfile collector, say).
    #[arg(long, conflicts_with = "watch")]
    pub prometheus: bool,
    /// Print again every second, with rates.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many updates.
    #[arg(long)]
    pub count: Option<u64>,
    /// The counters of one fan (by its overlay) instead of the totals: the
    /// outcomes decided once a packet's fan was known.
    #[arg(long, value_name = "OVERLAY")]
    pub fan: Option<ipnetwork::Ipv4Network>,
}

#[derive(Args, Clone)]
pub struct MonitorArgs {
    /// One JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Samples of the packets the programs pass on to the stack as well
    /// (rate-limited like the drops: 10 a second per CPU, bursts of 20).
    #[arg(long)]
    pub passes: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Args, Clone)]
pub struct MapArgs {
    /// The overlay prefix, e.g. 250.0.0.0/8.
    #[arg(long)]
    pub overlay: IpNetwork,
    /// This host's underlay address with the underlay prefix length, e.g. 172.30.0.28/16.
    #[arg(long)]
    pub underlay: IpNetwork,
    /// Overlay addresses to locate.
    pub addresses: Vec<Ipv4Addr>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Sync the endpoint map once and exit.
    #[arg(long)]
    pub once: bool,
    /// Full resync at least this often, besides netlink events.
    #[arg(long, default_value_t = 10)]
    pub resync_seconds: u64,
    /// Steer each flow from a container to one CPU (RPS on its port, as a
    /// NIC's RSS would), so a flow sent from two CPUs is not reordered; costs
    /// a hop between CPUs, which shows in request/response latency.
    #[arg(long)]
    pub steer_flows: bool,
    /// Serve the counters for Prometheus on ADDR:PORT (GET /metrics); off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on a wildcard address (every address of the host, which its containers reach too).
    #[arg(long, requires = "metrics")]
    pub metrics_any_address: bool,
    /// Started by `attach` (the last `detach` stops it; reads no configuration).
    #[arg(long, hide = true)]
    pub started_by_attach: bool,
    /// The configuration whose fans to bring up at start and on `reload`
    /// (default /etc/network/fan; a missing default file means no fans).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_prefixes_are_parsed_or_refused_by_name() {
        let range = parse_range("250.0.28.2-250.0.28.127").unwrap();
        assert_eq!(range.len(), 126);
        assert!(
            parse_range("250.0.28.2")
                .unwrap_err()
                .contains("not FIRST-LAST")
        );
        assert!(
            parse_range("250.0.28.9-250.0.28.2")
                .unwrap_err()
                .contains("comes after")
        );
        assert!(parse_range("250.0.28.2-x").unwrap_err().contains("\"x\""));
        assert_eq!(
            parse_cidr("250.0.28.128/26").unwrap().to_string(),
            "250.0.28.128/26"
        );
        assert!(
            parse_cidr("250.0.28.130/26")
                .unwrap_err()
                .contains("aligned")
        );
        assert!(parse_cidr("250.0.28.128").unwrap_err().contains("BASE/LEN"));
    }

    #[test]
    fn vnis_and_ports_are_parsed_or_refused_by_name() {
        assert_eq!(parse_vni("16384000"), Ok(16_384_000));
        assert_eq!(parse_vni("0"), Ok(0));
        assert_eq!(parse_vni("16777215"), Ok(MAX_VNI));
        assert!(parse_vni("16777216").unwrap_err().contains("24 bits"));
        assert!(parse_vni("-1").unwrap_err().contains("not a VNI"));
        assert!(parse_vni("x").unwrap_err().contains("not a VNI"));
        assert_eq!(parse_port("8472"), Ok(8472));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("65536").unwrap_err().contains("1 to 65535"));
    }
}
