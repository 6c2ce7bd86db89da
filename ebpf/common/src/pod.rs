//! `aya::Pod` for every map type, so user space can read and write the maps (feature `user`).
#![allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait; each impl below states why it holds")]

use crate::nat::*;
use crate::policy::*;
use crate::types::*;

macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // SAFETY: the type is #[repr(C)], made only of integers and integer arrays, with every padding byte
            // spelled out as a named field (checked by the layout tests), so any bit pattern is a valid value and
            // there are no uninitialised bytes.
            unsafe impl aya::Pod for $t {}
        )+
    };
}

pod!(
    ServiceKey,
    ServiceValue,
    Backend,
    AffinityKey,
    AffinityValue,
    AffinityMatchKey,
    ReverseSkKey,
    ReverseSkValue,
    CtKey,
    CtValue,
    Counters,
    Config,
    MaglevMeta,
    MaglevTableS,
    MaglevTableM,
    MaglevTableL,
    PolEndpoint,
    PolRuleData,
    PolRuleValue,
    PolCtKey,
    PolCtValue,
    PolStatsKey,
    PolVerdict,
    PolConfig,
    NatConfig,
    NatEntry,
    L2Entry,
);
