// The eBPF programs live in the `fan-ebpf` binary target (src/main.rs). This
// empty library only lets fan-userspace name this package as a build
// dependency, so cargo rebuilds the object whenever its sources change.
#![no_std]
