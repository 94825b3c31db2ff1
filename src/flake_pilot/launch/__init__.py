"""The launchers' warm path, fenced: what podman-pilot and firecracker-pilot run on every call.

A warm launch (registration cache hit) imports only the interpreter's built-in modules and this
package (tests/test_launch_imports.py): no ``os`` (``fastos``), no ``typing``, dataclasses, ``re``,
``json``, ``subprocess``, ``signal`` (``_signal``), YAML or ``errors`` at module level. What only a cold
launch needs (parsing the registration, creating an instance, composing a delta image, TAP,
overlay) lives outside and is imported where it is used.
"""
