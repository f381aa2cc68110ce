//! A connection's subscription filter (SPEC §3.3): two dimensions, event types and
//! entity refs, each either *all* or an explicit set.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{ValidationError, normalize_entity_ref, validate_event_type};

/// Most entries one filter dimension may hold, so a client cannot grow a
/// connection's memory or matching cost without bound.
pub const MAX_FILTER_ENTRIES: usize = 1000;

/// One dimension of a filter. On the wire: `"*"` or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    #[default]
    All,
    Only(BTreeSet<String>),
}

impl Selection {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(set) => set.contains(value),
        }
    }

    fn len(&self) -> usize {
        match self {
            Selection::All => 0,
            Selection::Only(set) => set.len(),
        }
    }
}

impl Serialize for Selection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Selection::All => s.serialize_str("*"),
            Selection::Only(set) => set.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Selection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Star(String),
            List(Vec<String>),
        }
        match Wire::deserialize(d).map_err(|_| serde::de::Error::custom("expected \"*\" or a list of strings"))? {
            Wire::Star(s) if s == "*" => Ok(Selection::All),
            Wire::Star(s) => Err(serde::de::Error::custom(format!("expected \"*\" or a list of strings, got {s:?}"))),
            Wire::List(items) => Ok(Selection::Only(items.into_iter().collect())),
        }
    }
}

/// Why a filter change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("a filter may hold at most {MAX_FILTER_ENTRIES} event types and {MAX_FILTER_ENTRIES} entity refs")]
    TooLarge,
}

/// The filter of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filter {
    pub event_types: Selection,
    pub entity_refs: Selection,
}

/// Validates event types; returns them unchanged.
pub fn clean_event_types(types: Vec<String>) -> Result<Vec<String>, ValidationError> {
    for t in &types {
        validate_event_type(t)?;
    }
    Ok(types)
}

/// Validates entity refs; returns them lower-cased.
pub fn clean_entity_refs(refs: Vec<String>) -> Result<Vec<String>, ValidationError> {
    refs.iter().map(|r| normalize_entity_ref(r)).collect()
}

fn clean_selection(sel: Selection, refs: bool) -> Result<Selection, ValidationError> {
    match sel {
        Selection::All => Ok(Selection::All),
        Selection::Only(set) => {
            let items: Vec<String> = set.into_iter().collect();
            let items = if refs { clean_entity_refs(items)? } else { clean_event_types(items)? };
            Ok(Selection::Only(items.into_iter().collect()))
        }
    }
}

fn add(sel: &mut Selection, items: Vec<String>) {
    match sel {
        Selection::All => *sel = Selection::Only(items.into_iter().collect()),
        Selection::Only(set) => set.extend(items),
    }
}

fn remove(sel: &mut Selection, items: &[String]) {
    if let Selection::Only(set) = sel {
        for i in items {
            set.remove(i);
        }
    }
}

impl Filter {
    /// A filter from the URL's `event_types=a,b&entity_refs=x,y`; a missing or
    /// empty parameter means *all*.
    pub fn from_lists(event_types: Option<Vec<String>>, entity_refs: Option<Vec<String>>) -> Result<Self, FilterError> {
        let mut f = Filter::default();
        f.subscribe(event_types, entity_refs)?;
        Ok(f)
    }

    /// Does an event of this type and entity ref pass? An event without an
    /// `entity_ref` passes the entity dimension.
    pub fn matches(&self, event_type: &str, entity_ref: Option<&str>) -> bool {
        self.event_types.matches(event_type) && entity_ref.is_none_or(|r| self.entity_refs.matches(r))
    }

    /// `subscribe`: a non-empty list turns an *all* dimension into that list, or
    /// adds to an explicit one. An omitted or empty list leaves the dimension as it is.
    pub fn subscribe(&mut self, event_types: Option<Vec<String>>, entity_refs: Option<Vec<String>>) -> Result<(), FilterError> {
        let mut next = self.clone();
        if let Some(t) = event_types.filter(|t| !t.is_empty()) {
            add(&mut next.event_types, clean_event_types(t)?);
        }
        if let Some(r) = entity_refs.filter(|r| !r.is_empty()) {
            add(&mut next.entity_refs, clean_entity_refs(r)?);
        }
        self.commit(next)
    }

    /// `unsubscribe`: removes from explicit lists (an emptied list matches
    /// nothing); an *all* dimension stays *all*.
    pub fn unsubscribe(&mut self, event_types: Option<Vec<String>>, entity_refs: Option<Vec<String>>) -> Result<(), FilterError> {
        let mut next = self.clone();
        if let Some(t) = event_types {
            remove(&mut next.event_types, &t);
        }
        if let Some(r) = entity_refs {
            // Refs compare case-insensitively; removing an invalid ref is a no-op, not an error.
            let r: Vec<String> = r.iter().map(|r| r.to_lowercase()).collect();
            remove(&mut next.entity_refs, &r);
        }
        self.commit(next)
    }

    /// `update_filter`: replaces each given dimension.
    pub fn replace(&mut self, event_types: Option<Selection>, entity_refs: Option<Selection>) -> Result<(), FilterError> {
        let mut next = self.clone();
        if let Some(t) = event_types {
            next.event_types = clean_selection(t, false)?;
        }
        if let Some(r) = entity_refs {
            next.entity_refs = clean_selection(r, true)?;
        }
        self.commit(next)
    }

    fn commit(&mut self, next: Filter) -> Result<(), FilterError> {
        if next.event_types.len() > MAX_FILTER_ENTRIES || next.entity_refs.len() > MAX_FILTER_ENTRIES {
            return Err(FilterError::TooLarge);
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn starts_as_all_and_matches_everything() {
        let f = Filter::default();
        assert!(f.matches("anything", Some("a:b/c")) && f.matches("x", None));
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"event_types":"*","entity_refs":"*"}"#);
    }

    #[test]
    fn subscribe_narrows_all_then_adds() {
        let mut f = Filter::default();
        f.subscribe(v(&["a"]), None).unwrap();
        assert!(f.matches("a", None) && !f.matches("b", None));
        f.subscribe(v(&["b"]), v(&["Host:Default/X"])).unwrap();
        assert!(f.matches("b", Some("host:default/x")));
        assert!(!f.matches("b", Some("host:default/y")));
        assert!(f.matches("b", None), "events without entity_ref pass the entity dimension");
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"event_types":["a","b"],"entity_refs":["host:default/x"]}"#);
    }

    #[test]
    fn unsubscribe_removes_and_an_emptied_list_matches_nothing() {
        let mut f = Filter::from_lists(v(&["a", "b"]), None).unwrap();
        f.unsubscribe(v(&["a"]), None).unwrap();
        assert!(!f.matches("a", None) && f.matches("b", None));
        f.unsubscribe(v(&["b"]), None).unwrap();
        assert!(!f.matches("b", None));
        let mut all = Filter::default();
        all.unsubscribe(v(&["a"]), v(&["x:y/z"])).unwrap();
        assert_eq!(all, Filter::default(), "unsubscribe from *all* changes nothing");
    }

    #[test]
    fn replace_sets_dimensions() {
        let mut f = Filter::from_lists(v(&["a"]), v(&["x:y/z"])).unwrap();
        f.replace(Some(Selection::All), None).unwrap();
        assert!(f.matches("zzz", Some("x:y/z")) && !f.matches("zzz", Some("x:y/q")));
        let sel: Selection = serde_json::from_str(r#"["k:n/A"]"#).unwrap();
        f.replace(None, Some(sel)).unwrap();
        assert!(f.matches("q", Some("k:n/a")));
        assert!(serde_json::from_str::<Selection>(r#""all""#).is_err());
        assert!(serde_json::from_str::<Selection>("3").is_err());
    }

    #[test]
    fn invalid_or_oversized_changes_leave_the_filter_untouched() {
        let mut f = Filter::from_lists(v(&["a"]), None).unwrap();
        let before = f.clone();
        assert!(matches!(f.subscribe(v(&["Bad Type"]), None), Err(FilterError::Invalid(_))));
        assert!(matches!(f.subscribe(None, v(&["not-a-ref"])), Err(FilterError::Invalid(_))));
        let many: Vec<String> = (0..=MAX_FILTER_ENTRIES).map(|i| format!("t{i}")).collect();
        assert_eq!(f.subscribe(Some(many), None), Err(FilterError::TooLarge));
        assert_eq!(f, before);
    }
}
