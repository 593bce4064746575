//! One module per command of `fan-xdp`. Commands never import each other:
//! what two of them share lives in the module that owns it.

pub mod attach;
pub mod bind;
pub mod detach;
pub mod generate;
pub mod map;
pub mod show;
pub mod stats;
