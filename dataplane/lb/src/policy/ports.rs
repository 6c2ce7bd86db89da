//! Port ranges as aligned blocks, so that an endPort range is a handful of LPM entries rather than one per port.

use super::model::PortMatch;

/// The fewest aligned blocks that cover exactly `first..=last` of protocol `proto` (at most 30 for any range).
/// An empty range (`first > last`) has none.
pub fn blocks(proto: u8, first: u16, last: u16) -> Vec<PortMatch> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest block that starts at `lo` (aligned) and stays within `hi`.
        let mut free = lo.trailing_zeros().min(16);
        while free > 0 && lo + (1 << free) - 1 > hi {
            free -= 1;
        }
        if free == 16 {
            return vec![PortMatch::Protocol(proto)];
        }
        out.push(PortMatch::Block { proto, port: lo as u16, bits: (16 - free) as u8 });
        lo += 1 << free;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(b: &[PortMatch]) -> Vec<u16> {
        let mut ports: Vec<u16> = b
            .iter()
            .flat_map(|m| match *m {
                PortMatch::Block { port, bits, .. } => {
                    (0..(1u32 << (16 - bits))).map(move |i| (u32::from(port) + i) as u16).collect::<Vec<_>>()
                }
                PortMatch::Protocol(_) => (0..=u16::MAX).collect(),
                PortMatch::All => unreachable!(),
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn one_port_is_one_full_length_block() {
        assert_eq!(blocks(6, 80, 80), vec![PortMatch::Block { proto: 6, port: 80, bits: 16 }]);
    }

    #[test]
    fn ranges_are_covered_exactly_by_few_blocks() {
        for (first, last, most) in [
            (1, 65535, 16),
            (80, 81, 1),
            (81, 82, 2),
            (1000, 2000, 30),
            (32000, 32768, 30),
            (0, 65535, 1),
            (65535, 65535, 1),
        ] {
            let b = blocks(17, first, last);
            assert!(b.len() <= most, "{first}-{last}: {} blocks", b.len());
            assert_eq!(covered(&b), (first..=last).collect::<Vec<_>>(), "{first}-{last}");
        }
    }

    #[test]
    fn the_whole_range_is_the_protocol_and_an_empty_range_is_nothing() {
        assert_eq!(blocks(6, 0, 65535), vec![PortMatch::Protocol(6)]);
        assert!(blocks(6, 90, 80).is_empty());
    }
}
