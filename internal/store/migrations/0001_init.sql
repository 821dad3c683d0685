-- Images: read-only bases (kernel, modules, rootfs) built or imported.
CREATE TABLE images (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    dir            TEXT NOT NULL,
    digest         TEXT NOT NULL,
    kernel_version TEXT NOT NULL DEFAULT '',
    manifest       TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- VMs: a row plus the resources it owns. spec and handle are JSON.
CREATE TABLE vms (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    image_id   TEXT REFERENCES images(id),
    state      TEXT NOT NULL,
    spec       TEXT NOT NULL DEFAULT '{}',
    handle     TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
