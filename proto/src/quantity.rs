//! Quantities: memory sizes (`256Mi`, `2Gi`, `512M`, bytes) and CPU counts (`0.5`, `500m`).
