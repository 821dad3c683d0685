-- Network leases (internal/network): one IPv4 address, one host tap and one
-- MAC per VM. No foreign key to vms: the daemon reconciles leases against
-- the VMs that exist at start, and a lease may be taken while the VM's row
-- is still being created.
CREATE TABLE leases (
    vm_id      TEXT PRIMARY KEY,
    addr       TEXT NOT NULL UNIQUE,
    tap        TEXT NOT NULL UNIQUE,
    mac        TEXT NOT NULL UNIQUE,
    egress     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- The address handed out last, so that the next search starts after it and
-- a released address is not given to the next VM at once (stale ARP and
-- DNS caches).
CREATE TABLE lease_cursor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    addr TEXT NOT NULL
);
