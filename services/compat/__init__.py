"""Shims for third-party libraries: one module per library, each shim naming the version it targets; a unit
test per shim fails once the library no longer needs it."""
