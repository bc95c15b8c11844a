//! Taking typed maps out of the loaded object, with errors that name the map.

use aya::{Ebpf, maps::Map};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("eBPF map {0} is missing from the object (build mismatch)")]
    Missing(&'static str),
    #[error("eBPF map {name}")]
    Type {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Takes map `name` out of the object as a `T` (checks key and value sizes).
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapError::Missing(name))?;
    T::try_from(map).map_err(|source| MapError::Type { name, source })
}
