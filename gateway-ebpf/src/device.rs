//! Which device sent the frame: MAC first (Ethernet), then exact address, then CIDR.

use gateway_common::{
    maps::{
        DEVICE_SUSPENDED, DeviceRef, GenSettings, SETTINGS_HAS_CIDR, SETTINGS_HAS_IP,
        SETTINGS_HAS_MAC, UNKNOWN_SLOT,
    },
    packet::Addr,
};

use crate::maps;

/// The device a frame is attributed to. Starts as "unknown" with the generation's
/// `unknown_devices` policy and is refined by the lookups.
pub struct Device {
    pub slot: u32,
    pub policy: u32,
    pub flags: u16,
    pub known: bool,
}

impl Device {
    #[inline(always)]
    pub fn unknown(settings: &GenSettings) -> Self {
        Self {
            slot: UNKNOWN_SLOT,
            policy: settings.unknown_policy,
            flags: 0,
            known: false,
        }
    }

    #[inline(always)]
    pub fn suspended(&self) -> bool {
        self.flags & DEVICE_SUSPENDED != 0
    }

    #[inline(always)]
    fn set(&mut self, d: DeviceRef) {
        self.slot = d.slot;
        self.policy = d.policy as u32;
        self.flags = d.flags;
        self.known = true;
    }

    /// `mac` as `table::mac_key` makes it.
    #[inline(always)]
    pub fn by_mac(&mut self, generation: u32, settings: &GenSettings, mac: u64) {
        if settings.flags & SETTINGS_HAS_MAC == 0 {
            return;
        }
        if let Some(d) = maps::device_by_mac(generation, settings.table_seed, mac) {
            self.set(d);
        }
    }

    /// Exact address, then longest matching prefix; only if the MAC did not identify the device.
    #[inline(always)]
    pub fn by_address(&mut self, generation: u32, settings: &GenSettings, src: &Addr) {
        if self.known {
            return;
        }
        if settings.flags & SETTINGS_HAS_IP != 0
            && let Some(d) = maps::device_by_ip(generation, settings.table_seed, src)
        {
            self.set(d);
            return;
        }
        if settings.flags & SETTINGS_HAS_CIDR != 0
            && let Some(d) = maps::device_by_cidr(generation, src)
        {
            self.set(d);
        }
    }
}
