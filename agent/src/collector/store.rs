//! What the collector keeps: per agent, the sequences it acknowledged and a
//! window of recent reports (encoded), bounded in time and in total memory;
//! agents idle past the retention are forgotten.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

pub struct Limits {
    pub retention: Duration,
    pub max_memory: usize,
    pub max_agents: usize,
    pub rate: f64,
    pub burst: f64,
    pub max_age: Duration,
    pub max_future: Duration,
}

/// One agent as the collector knows it.
pub struct AgentState {
    /// Highest sequence stored, per epoch (a few recent epochs).
    acked: VecDeque<(u64, u64)>,
    /// Reports kept, oldest first, as received (encoded).
    pub window: VecDeque<Stored>,
    tokens: f64,
    refilled: Instant,
    last_seen: Instant,
}

impl AgentState {
    fn new(burst: f64) -> Self {
        let now = Instant::now();
        Self { acked: VecDeque::new(), window: VecDeque::new(), tokens: burst, refilled: now, last_seen: now }
    }

    pub fn acked(&self, epoch: u64) -> u64 {
        self.acked.iter().find(|(e, _)| *e == epoch).map_or(0, |(_, s)| *s)
    }

    fn set_acked(&mut self, epoch: u64, seq: u64) {
        match self.acked.iter_mut().find(|(e, _)| *e == epoch) {
            Some(a) => a.1 = a.1.max(seq),
            None => {
                self.acked.push_back((epoch, seq));
                if self.acked.len() > 8 {
                    self.acked.pop_front();
                }
            }
        }
    }
}

pub struct Stored {
    pub end_ns: i64,
    pub bytes: Arc<[u8]>,
}

/// Why a report is not taken.
pub enum Refused {
    /// Already stored: acknowledge it again.
    Duplicate,
    /// At `--max-agents`, none idle.
    Full,
    /// Over `--rate`.
    Rate,
}

#[derive(Default)]
pub struct Store {
    pub agents: HashMap<String, AgentState>,
    /// (agent, size) of every kept report in arrival order: each agent's
    /// entries are in the order of its window, so evicting from the front
    /// here is evicting from the front there.
    order: VecDeque<(String, usize)>,
    bytes: usize,
    pub rejected: u64,
    /// Keeps the log of rejections bounded.
    pub reject_log: super::service::RejectLog,
    pub evicted_agents: u64,
}

impl Store {
    /// Whether report `seq` of (`id`, `epoch`) may be journaled and kept:
    /// the agent's cap, its rate, and duplicates.
    pub fn admit(&mut self, id: &str, epoch: u64, seq: u64, limits: &Limits) -> Result<(), Refused> {
        if !self.agents.contains_key(id) && self.agents.len() >= limits.max_agents {
            self.evict_idle(limits.retention);
            if self.agents.len() >= limits.max_agents {
                return Err(Refused::Full);
            }
        }
        let state = self.agents.entry(id.to_string()).or_insert_with(|| AgentState::new(limits.burst));
        // Token bucket: sustained --rate, bursts up to --burst.
        let t = Instant::now();
        state.tokens = (state.tokens + t.duration_since(state.refilled).as_secs_f64() * limits.rate).min(limits.burst);
        state.refilled = t;
        state.last_seen = t;
        if state.tokens < 1.0 {
            return Err(Refused::Rate);
        }
        state.tokens -= 1.0;
        if seq <= state.acked(epoch) {
            return Err(Refused::Duplicate);
        }
        Ok(())
    }

    /// Records report `seq` as stored and keeps it in the agent's window
    /// (unless it already is: two streams of one agent may race).
    pub fn keep(&mut self, id: &str, epoch: u64, seq: u64, end_ns: i64, bytes: Arc<[u8]>, limits: &Limits) {
        let state = self.agents.entry(id.to_string()).or_insert_with(|| AgentState::new(limits.burst));
        if seq <= state.acked(epoch) {
            return;
        }
        state.set_acked(epoch, seq);
        self.bytes += bytes.len();
        self.order.push_back((id.to_string(), bytes.len()));
        state.window.push_back(Stored { end_ns, bytes });
        let oldest = crate::metrics::now_unix_ns() - limits.retention.as_nanos() as i64;
        while let Some((id, len)) = self.order.front() {
            let Some(agent) = self.agents.get_mut(id) else { break };
            let old = agent.window.front().is_some_and(|s| s.end_ns < oldest);
            if self.bytes <= limits.max_memory && !old {
                break;
            }
            agent.window.pop_front();
            self.bytes -= len;
            self.order.pop_front();
        }
    }

    /// Forgets agents that sent nothing for `idle` and have nothing kept.
    /// Only unacknowledged reports are ever sent again, so forgetting what
    /// such an agent had acknowledged lets nothing in twice (but a report
    /// whose acknowledgement was lost on the way, resent after `idle`).
    pub fn evict_idle(&mut self, idle: Duration) {
        let before = self.agents.len();
        self.agents.retain(|_, a| !a.window.is_empty() || a.last_seen.elapsed() < idle);
        self.evicted_agents += (before - self.agents.len()) as u64;
    }

    /// The kept reports of every agent ending at or after `since`: shared,
    /// not copied, so that a query decodes them without holding the store.
    pub fn snapshot(&self, since: i64) -> Vec<(String, Vec<Arc<[u8]>>)> {
        self.agents
            .iter()
            .map(|(id, a)| {
                (id.clone(), a.window.iter().filter(|r| r.end_ns >= since).map(|r| r.bytes.clone()).collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_agents: usize) -> Limits {
        Limits {
            retention: Duration::from_millis(50),
            max_memory: 1 << 20,
            max_agents,
            rate: 1000.0,
            burst: 1000.0,
            max_age: Duration::from_secs(3600),
            max_future: Duration::from_secs(60),
        }
    }

    #[test]
    fn idle_agents_make_room_for_new_ones() {
        let l = limits(2);
        let mut s = Store::default();
        let now = crate::metrics::now_unix_ns();
        for id in ["a", "b"] {
            assert!(s.admit(id, 1, 1, &l).is_ok());
            s.keep(id, 1, 1, now - 10_000_000_000, Arc::from(&b"x"[..]), &l);
        }
        // Their reports are older than the retention: gone at once.
        assert!(s.agents.values().all(|a| a.window.is_empty()));
        assert!(matches!(s.admit("c", 1, 1, &l), Err(Refused::Full)), "a and b were seen just now");
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.admit("c", 1, 1, &l).is_ok(), "a and b idle past the retention");
        assert_eq!(s.evicted_agents, 2);
        // A duplicate is refused as such.
        s.keep("c", 1, 1, now, Arc::from(&b"y"[..]), &l);
        assert!(matches!(s.admit("c", 1, 1, &l), Err(Refused::Duplicate)));
    }
}
