//! Readiness: each component of a process (a consumer, an HTTP listener) reports whether it
//! can do its job; `/readyz` is 200 only when every registered component is ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Readiness of every component of the process.
#[derive(Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, bool>>>,
}

/// One component's switch in [`Readiness`].
#[derive(Clone)]
pub struct ReadinessHandle {
    name: String,
    components: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Adds a component, initially not ready.
    pub fn register(&self, name: impl Into<String>) -> ReadinessHandle {
        let name = name.into();
        self.components
            .lock()
            .expect("readiness lock")
            .insert(name.clone(), false);
        ReadinessHandle {
            name,
            components: self.components.clone(),
        }
    }

    /// Marks every component whose name starts with `prefix` (a role's `<role>:`) ready or
    /// not, e.g. all of a role's components while it is restarted.
    pub fn set_prefix_ready(&self, prefix: &str, ready: bool) {
        for (name, v) in self.components.lock().expect("readiness lock").iter_mut() {
            if name.starts_with(prefix) {
                *v = ready;
            }
        }
    }

    /// Whether everything is ready (and at least one component exists), with each component's state.
    pub fn report(&self) -> (bool, BTreeMap<String, bool>) {
        let c = self.components.lock().expect("readiness lock").clone();
        (!c.is_empty() && c.values().all(|r| *r), c)
    }
}

impl ReadinessHandle {
    /// Marks this component ready or not.
    pub fn set_ready(&self, ready: bool) {
        if let Some(v) = self
            .components
            .lock()
            .expect("readiness lock")
            .get_mut(&self.name)
        {
            *v = ready;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_components_are() {
        let r = Readiness::default();
        assert!(!r.report().0, "nothing registered is not ready");
        let a = r.register("a");
        let b = r.register("b");
        a.set_ready(true);
        assert!(!r.report().0);
        b.set_ready(true);
        assert!(r.report().0);
        a.set_ready(false);
        assert_eq!(r.report().1.get("a"), Some(&false));
        a.set_ready(true);
        r.set_prefix_ready("b", false);
        assert_eq!(r.report().1.get("a"), Some(&true));
        assert_eq!(r.report().1.get("b"), Some(&false));
    }
}
