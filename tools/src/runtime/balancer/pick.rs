//! Choosing a target: smooth weighted round-robin (nginx's: an even spread that honours
//! weights without bursts), least-connections (weighted), and random two choices (the less
//! loaded of two picked at random, as Envoy and Finagle do).

use super::targets::TargetState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

pub struct Picker {
    algorithm: String,
    /// Serializes a smooth-WRR round (the running weights live on the targets).
    round: Mutex<()>,
    seed: std::sync::atomic::AtomicU64,
}

impl Picker {
    pub fn new(algorithm: &str) -> Picker {
        Picker {
            algorithm: algorithm.to_string(),
            round: Mutex::new(()),
            seed: std::sync::atomic::AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Pick among `cands` (an index into `targets`, the target's effective weight): the
    /// index picked, `None` when there is no candidate.
    pub fn pick(&self, targets: &[Arc<TargetState>], cands: &[(usize, u32)]) -> Option<usize> {
        match cands.len() {
            0 => return None,
            1 => return Some(cands[0].0),
            _ => {}
        }
        let load = |&(i, w): &(usize, u32)| {
            targets[i].in_flight.load(Ordering::Relaxed) as f64 / w.max(1) as f64
        };
        match self.algorithm.as_str() {
            "least-connections" => cands
                .iter()
                .min_by(|a, b| load(a).total_cmp(&load(b)))
                .map(|c| c.0),
            "random-two-choices" => {
                let i = (self.rand() % cands.len() as u64) as usize;
                let mut j = (self.rand() % (cands.len() as u64 - 1)) as usize;
                if j >= i {
                    j += 1;
                }
                let (a, b) = (&cands[i], &cands[j]);
                Some(if load(a) <= load(b) { a.0 } else { b.0 })
            }
            _ => {
                // The running weights are written only here, under a round's lock and on
                // the balancer's one thread: a plain load and store each, where `fetch_add`
                // would be a locked instruction per target. (Across a swap of the picker,
                // two rounds could interleave; a lost update only shifts the spread.)
                let _round = self.round.lock().expect("picker lock");
                let total: i64 = cands.iter().map(|c| c.1 as i64).sum();
                let mut best: Option<(usize, i64)> = None;
                for &(i, w) in cands {
                    let cur = &targets[i].wrr_current;
                    let c = cur.load(Ordering::Relaxed) + w as i64;
                    cur.store(c, Ordering::Relaxed);
                    if best.is_none_or(|(_, b)| c > b) {
                        best = Some((i, c));
                    }
                }
                let (i, _) = best?;
                let cur = &targets[i].wrr_current;
                cur.store(cur.load(Ordering::Relaxed) - total, Ordering::Relaxed);
                Some(i)
            }
        }
    }

    fn rand(&self) -> u64 {
        // xorshift64*: fast and good enough to spread two choices.
        let mut x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_honours_weights_evenly() {
        let a = Arc::new(TargetState::new("a", 5, false));
        let b = Arc::new(TargetState::new("b", 1, false));
        let c = Arc::new(TargetState::new("c", 1, false));
        let targets = vec![a, b, c];
        let cands = [(0, 5), (1, 1), (2, 1)];
        let p = Picker::new("round-robin");
        let seq: String = (0..7)
            .map(|_| targets[p.pick(&targets, &cands).unwrap()].address.clone())
            .collect();
        // nginx's example: a a b a c a a
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn least_connections_prefers_the_idle() {
        let a = Arc::new(TargetState::new("a", 1, false));
        let b = Arc::new(TargetState::new("b", 1, false));
        a.in_flight.store(3, std::sync::atomic::Ordering::Relaxed);
        let p = Picker::new("least-connections");
        let targets = [a, b];
        assert_eq!(p.pick(&targets, &[(0, 1), (1, 1)]), Some(1));
    }
}
