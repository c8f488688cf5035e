//! Serde helpers that reproduce Go's `encoding/json` leniency and `omitempty`.

use serde::{Deserialize, Deserializer};

/// Accept `null` (and absence, with `#[serde(default)]`) as the type's default value, as Go does
/// for slices, maps, pointers and structs.
pub fn null<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `omitempty` for any type whose zero value is its `Default`.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
