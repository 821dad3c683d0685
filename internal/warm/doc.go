// Package warm owns warm starts: everything that makes a new VM a restored
// clone instead of a cold boot. Three parts, one entry point.
//
//   - Templates (template.go, Store): a VM of a shape booted cold to a
//     ready agent, then snapshotted (vmm.Snapshotter). Keyed by everything
//     the snapshot depends on (Shape.Key).
//   - Spares (spare.go): clones restored ahead of demand, their identity
//     step and an exec rehearsed, idling until a create of their shape
//     takes one.
//   - Clone identity (Identity, ConfigureClone): what makes a restored
//     clone a VM of its own (RNG seed, clock, hostname, machine-id, MAC,
//     address) before it counts as ready.
//
// The VM manager uses the Pool (pool.go) and nothing else here for a
// create: Pool.Claim picks what can serve a VM of a shape (a ready spare,
// whose id the VM then takes, or a template), and Claim.Start returns a
// running, configured clone — trying the spare, then a restore — or nil,
// meaning boot cold (the reason is logged and reported as progress; the
// template of the shape is then built in the background, see
// Claim.ColdBoot). A template that is missing, damaged or refused by the
// VMM means a cold boot with a warning, never a failure.
//
// Files: templates in paths.Layout.TemplatesDir (see template.go); a
// spare lives in the directories of the VM id it will serve as, so that
// taking it moves nothing.
package warm
