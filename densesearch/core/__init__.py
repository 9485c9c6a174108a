"""The ground layer: errors, settings and enums, paths, typed manifests, the artifact door, CPU facts."""
