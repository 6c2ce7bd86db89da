//! Hash functions used by both sides: the tc program hashes a flow's 5-tuple to pick a Maglev slot, and user space
//! uses the same mixers for Maglev permutations. Plain arithmetic without loops, so the verifier accepts them and
//! every node computes the same value for the same flow.

/// The 32-bit finalizer of MurmurHash3: a bijective avalanche mix.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The 64-bit finalizer of MurmurHash3.
#[inline(always)]
pub const fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Hash of a flow's 5-tuple (addresses and ports as they appear in the packet). The same flow hashes the same on
/// every node, so every node picks the same Maglev slot for it.
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let a = ((saddr as u64) << 32) | daddr as u64;
    let b = ((sport as u64) << 32) | ((dport as u64) << 8) | proto as u64;
    let h = mix64(a ^ mix64(b ^ 0x9e37_79b9_7f4a_7c15));
    (h ^ (h >> 32)) as u32
}
