//! Exists so that `gateway-user` can declare a build dependency on this crate (cargo then
//! rebuilds the user crate when this one changes); the programs are the binaries.
#![no_std]
