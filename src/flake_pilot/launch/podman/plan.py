"""What podman-pilot needs from a registration, cached so a warm launch imports no YAML.

Parsing YAML costs ~40 ms of imports (PyYAML, re, dataclasses), more than the launcher's whole
budget. ``load`` takes the plan from the launchers' shared registration cache
(``flake_pilot.launch.launchcache``: private dir, stamps of every input file, any doubt = parse again)
or parses the registration (flakeconf, settings) and stores the result there.
"""

from .. import launchcache

KIND = "podman"
SHAPE = 2  # bump when the fields below change


class Plan:
    """The launch-relevant part of a flake registration (read-only after construction)."""

    __slots__ = (
        "app",
        "config_file",
        "image",
        "target",
        "resume",
        "attach",
        "opts",
        "user_mode",
        "user_scope",
        "ids_dir",
        "storage_conf",
        "podman",
        "compose",
        "tls_verify",
        "images_json",
        "image_present",
    )

    def __init__(self, d: dict[str, object]) -> None:
        for key in self.__slots__:
            object.__setattr__(self, key, d[key])

    app: str
    config_file: str
    image: str
    target: str
    resume: bool
    attach: bool
    opts: tuple[str, ...]
    user_mode: bool  # runas != root: the caller's own (rootless) podman
    user_scope: bool  # found in the caller's user registrations
    ids_dir: str
    storage_conf: str | None
    podman: str
    compose: bool  # delta/includes: compose.ensure_image decides the image
    tls_verify: bool  # False: pulls at launch may use a plain-http registry
    images_json: str | None  # the store's image list (its stamp is part of the plan), if known
    image_present: bool | None  # the image is in the store; None: unknown (podman run pulls)

    def as_dict(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.__slots__}


def cached(app: str) -> Plan | None:
    data = launchcache.load(KIND, SHAPE, app)
    if data is None:
        return None
    try:
        return Plan(data)
    except KeyError:
        return None


def build(app: str) -> Plan:
    """Parse the registration (the slow path); *app* is a valid app name (``load`` checks it)."""
    from ... import flakeconf, settings
    from ...errors import ConfigError
    from ...podman.compose import needs_compose

    flake, user_scope = flakeconf.find(app)
    if not isinstance(flake, flakeconf.PodmanFlake):
        raise ConfigError(f"{flake.config_file}: {app!r} is a {flake.engine} flake, not a container flake")
    system = settings.load(False)
    cfg = settings.load(True) if (user_scope or flake.user_mode) else system
    plan = Plan(
        {
            "app": app,
            "config_file": flake.config_file,
            "image": flake.image,
            "target": flake.target_app_path,
            "resume": flake.resume,
            "attach": flake.attach,
            "opts": tuple(flake.podman_opts or ()),
            "user_mode": flake.user_mode,
            "user_scope": user_scope,
            "ids_dir": cfg.podman_ids_dir,
            "storage_conf": cfg.podman_storage_conf,
            "podman": cfg.podman_binary,
            "compose": needs_compose(flake),
            "tls_verify": flake.tls_verify,
            "images_json": None,
            "image_present": None,
        }
    )
    return plan


def load(app: str) -> Plan:
    plan = cached(app)
    if plan is not None:
        return plan
    from .. import names

    names.app_name(app)  # before its name becomes a path
    before = launchcache.stamps(launchcache.inputs(app))
    plan = build(app)
    if not plan.compose:  # whether the launch must pull: decided here, once per store change
        from ...podman.pull import images_json, present

        fields = plan.as_dict()
        fields["images_json"] = images_json(plan.storage_conf)
        if fields["images_json"] is not None:
            before += launchcache.stamps([str(fields["images_json"])])  # a pull or rmi renews the plan
            fields["image_present"] = present(str(fields["images_json"]), plan.image)
        plan = Plan(fields)
    launchcache.store(KIND, SHAPE, app, plan.as_dict(), before)
    return plan
