//! Taking typed maps out of the loaded object, with errors that name the map.

use aya::{Ebpf, maps::Map};

#[derive(Debug, thiserror::Error)]
#[error("eBPF map {name}: {reason}")]
pub struct MapError {
    pub name: &'static str,
    pub reason: String,
}

/// Takes map `name` out of the object as a `T` (checks key and value sizes).
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapError { name, reason: "missing from the object".into() })?;
    T::try_from(map).map_err(|err| MapError { name, reason: err.to_string() })
}
