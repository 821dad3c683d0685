-- Why a VM is in its state (error reason, how it was booted), and when it
-- last started.
ALTER TABLE vms ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN started_at TEXT NOT NULL DEFAULT '';
CREATE INDEX vms_image_id ON vms(image_id);
