package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/vm"
	"github.com/banger-sh/banger/internal/warm"
)

// images is the image registry: image directories under the cache dir,
// one store row each. A row exists only for a complete image: builds and
// imports happen in a temporary directory and are registered last.
type images struct {
	store  *store.Store
	layout paths.Layout
	cfg    config.Config
	log    interface{ Info(string, ...any) }
	vms    *vm.Manager

	mu       sync.Mutex
	building map[string]*sync.Mutex // name → build lock
}

func (s *images) buildLock(name string) func() {
	s.mu.Lock()
	l, ok := s.building[name]
	if !ok {
		l = &sync.Mutex{}
		s.building[name] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func imageID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Resolve implements vm.Images: the default image is built on first use.
func (s *images) Resolve(ctx context.Context, name string, progress vm.Progress) (*store.Image, error) {
	im, err := s.store.GetImage(ctx, name)
	if err == nil || !errors.Is(err, errdefs.ErrNotFound) || name != s.cfg.VM.Image {
		if err != nil && errors.Is(err, errdefs.ErrNotFound) {
			return nil, errdefs.NotFound(fmt.Sprintf("image %q not found: build it with 'banger image build %s' or import one", name, name))
		}
		return im, err
	}
	progress.Phase("image", fmt.Sprintf("image %q not found: building it first (once: about a minute, seconds with a warm cache)", name))
	return s.Build(ctx, api.BuildImageRequest{Name: name}, progress)
}

// Build builds and registers an image.
func (s *images) Build(ctx context.Context, req api.BuildImageRequest, progress vm.Progress) (*store.Image, error) {
	if req.Name == "" {
		req.Name = s.cfg.VM.Image
	}
	if !image.ValidName(req.Name) {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("invalid image name %q", req.Name))
	}
	unlock := s.buildLock(req.Name)
	defer unlock()
	if im, err := s.store.GetImage(ctx, req.Name); err == nil {
		return im, errdefs.AlreadyExists(fmt.Sprintf("image %q already exists (remove it first with 'banger image rm %s')", req.Name, req.Name))
	}
	o := image.BuildOptions{
		Name: req.Name, Suite: req.Suite, Packages: req.Packages, Mirror: req.Mirror,
		CacheDir: s.layout.BuildCacheDir(), TmpDir: s.layout.TmpDir(), Progress: progress,
	}
	if req.Size != "" {
		n, err := config.ParseSize(req.Size)
		if err != nil {
			return nil, errdefs.InvalidArgument("--size: " + err.Error())
		}
		o.SizeBytes = n
	}
	id := imageID()
	o.Dest = filepath.Join(s.layout.ImagesDir(), id)
	if err := os.MkdirAll(s.layout.TmpDir(), 0o755); err != nil {
		return nil, err
	}
	man, err := image.Build(ctx, o)
	if err != nil {
		return nil, err // already says "build image NAME: phase: ..."
	}
	return s.register(ctx, id, man)
}

// Import registers an image made of existing files.
func (s *images) Import(ctx context.Context, req api.ImportImageRequest, progress vm.Progress) (*store.Image, error) {
	if !image.ValidName(req.Name) {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("invalid image name %q", req.Name))
	}
	if req.Kernel == "" || req.Rootfs == "" {
		return nil, errdefs.InvalidArgument("import needs --kernel and --rootfs")
	}
	unlock := s.buildLock(req.Name)
	defer unlock()
	if _, err := s.store.GetImage(ctx, req.Name); err == nil {
		return nil, errdefs.AlreadyExists(fmt.Sprintf("image %q already exists", req.Name))
	}
	id := imageID()
	if err := os.MkdirAll(s.layout.TmpDir(), 0o755); err != nil {
		return nil, err
	}
	man, err := image.Import(ctx, image.ImportOptions{
		Name: req.Name, Kernel: req.Kernel, Initrd: req.Initrd, Rootfs: req.Rootfs, Modules: req.Modules,
		Dest: filepath.Join(s.layout.ImagesDir(), id), TmpDir: s.layout.TmpDir(), Progress: progress,
	})
	if err != nil {
		return nil, err
	}
	return s.register(ctx, id, man)
}

// warmImage builds the warm-start template of an image for a shape now.
func (d *Daemon) warmImage(ctx context.Context, name string, req api.WarmRequest, progress vm.Progress) (*warm.Template, error) {
	if err := checkWarm(d.cfg, req); err != nil {
		return nil, err
	}
	im, err := d.store.GetImage(ctx, name)
	if err != nil {
		return nil, err
	}
	man, err := image.Load(im.Dir)
	if err != nil {
		return nil, err
	}
	vcpus, mem, disk := req.VCPUs, req.MemoryMiB, d.cfg.VM.Disk
	if vcpus == 0 {
		vcpus = d.cfg.VM.VCPUs
	}
	if mem == 0 {
		mem = d.cfg.VM.MemoryMiB
	}
	if req.Disk != "" {
		disk = req.Disk
	}
	n, err := config.ParseSize(disk)
	if err != nil {
		return nil, errdefs.InvalidArgument("--disk: " + err.Error())
	}
	if vcpus < 1 || vcpus > 64 || mem < 128 || mem > 65536 {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("--vcpu %d / --mem %d out of range", vcpus, mem))
	}
	progress.Phase("template", fmt.Sprintf("booting %s (%d vCPU, %d MiB) to snapshot it", name, vcpus, mem))
	return d.vms.WarmImage(ctx, man, im.Name, vcpus, mem, n)
}

func (s *images) register(ctx context.Context, id string, man *image.Manifest) (*store.Image, error) {
	raw, _ := json.Marshal(man)
	im := &store.Image{ID: id, Name: man.Name, Dir: man.Dir, Digest: man.Digest, KernelVersion: man.KernelVersion, Manifest: raw}
	if err := s.store.CreateImage(context.WithoutCancel(ctx), im); err != nil {
		os.RemoveAll(man.Dir)
		return nil, err
	}
	s.log.Info("image registered", "image", man.Name, "id", id, "digest", man.Digest)
	return im, nil
}

// Remove unregisters an image and deletes its files; refused while a VM
// uses it.
func (s *images) Remove(ctx context.Context, name string) error {
	im, err := s.store.GetImage(ctx, name)
	if err != nil {
		return err
	}
	users, err := s.vms.ImageInUse(ctx, im.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.Conflict(fmt.Sprintf("image %s is used by VMs: %v (delete them first)", im.Name, users))
	}
	if err := s.store.DeleteImage(ctx, im.ID); err != nil {
		return err
	}
	s.vms.Warm().ImageRemoved(im.Digest) // the spares go now, the templates at the next start
	return os.RemoveAll(im.Dir)
}

func (s *images) toAPI(ctx context.Context, im *store.Image) api.Image {
	out := api.Image{ID: im.ID, Name: im.Name, Dir: im.Dir, Digest: im.Digest, KernelVersion: im.KernelVersion, CreatedAt: im.CreatedAt}
	var man image.Manifest
	if json.Unmarshal(im.Manifest, &man) == nil {
		out.Suite, out.Packages = man.Suite, man.Packages
		out.Files = map[string]api.File{}
		for n, f := range man.Files {
			out.Files[n] = api.File{Size: f.Size, SHA256: f.SHA256}
			out.SizeBytes += f.Size
		}
	}
	out.VMs, _ = s.vms.ImageInUse(ctx, im.ID)
	for _, t := range s.vms.Warm().Of(im.Digest) {
		out.Templates = append(out.Templates, api.Template{
			Key: t.Key, VCPUs: t.Shape.VCPUs, MemoryMiB: t.Shape.MemoryMiB, DiskBytes: t.Shape.RootBytes,
			SizeBytes: t.Bytes(), Created: t.Created, InUse: s.vms.TemplateInUse(t.Key),
			Spare: s.vms.Warm().SpareState(t.Key),
		})
	}
	return out
}

func (d *Daemon) imageRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		list, err := d.store.ListImages(r.Context())
		if err != nil {
			writeError(w, r, err)
			return
		}
		out := []api.Image{}
		for _, im := range list {
			out = append(out, d.images.toAPI(r.Context(), im))
		}
		writeJSON(w, 200, out)
	})
	mux.HandleFunc("GET /v1/images/{name}", func(w http.ResponseWriter, r *http.Request) {
		im, err := d.store.GetImage(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, d.images.toAPI(r.Context(), im))
	})
	mux.HandleFunc("DELETE /v1/images/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.images.Remove(r.Context(), r.PathValue("name")); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]string{"deleted": r.PathValue("name")})
	})
	mux.HandleFunc("POST /v1/images", func(w http.ResponseWriter, r *http.Request) {
		var req api.BuildImageRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		st := newEventStream(w)
		im, err := d.images.Build(r.Context(), req, st.Progress)
		if err != nil {
			st.finish(nil, d.explainFull(err))
			return
		}
		st.finish(d.images.toAPI(r.Context(), im), nil)
	})
	mux.HandleFunc("POST /v1/images/{name}/warm", func(w http.ResponseWriter, r *http.Request) {
		var req api.WarmRequest
		if r.ContentLength != 0 {
			if err := decodeBody(r, &req); err != nil {
				writeError(w, r, err)
				return
			}
		}
		st := newEventStream(w)
		t, err := d.warmImage(r.Context(), r.PathValue("name"), req, st.Progress)
		if err != nil {
			st.finish(nil, d.explainFull(err))
			return
		}
		st.finish(api.Template{Key: t.Key, VCPUs: t.Shape.VCPUs, MemoryMiB: t.Shape.MemoryMiB, DiskBytes: t.Shape.RootBytes, SizeBytes: t.Bytes(), Created: t.Created}, nil)
	})
	mux.HandleFunc("POST /v1/images/prune", func(w http.ResponseWriter, r *http.Request) {
		var res api.PruneResult
		removed, sizes, err := d.vms.Warm().Prune(func(t *warm.Template) bool { return d.vms.TemplateInUse(t.Key) })
		if err != nil {
			writeError(w, r, err)
			return
		}
		res.Removed = []string{}
		for _, t := range removed {
			res.Removed = append(res.Removed, t.Key)
			res.Bytes += sizes[t.Key]
		}
		writeJSON(w, 200, res)
	})
	mux.HandleFunc("POST /v1/images/import", func(w http.ResponseWriter, r *http.Request) {
		var req api.ImportImageRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		st := newEventStream(w)
		im, err := d.images.Import(r.Context(), req, st.Progress)
		if err != nil {
			st.finish(nil, d.explainFull(err))
			return
		}
		st.finish(d.images.toAPI(r.Context(), im), nil)
	})
}

// checkWarm checks a warm request's shape before any image is looked at.
func checkWarm(cfg config.Config, req api.WarmRequest) error {
	if req.VCPUs < 0 || req.VCPUs > 64 {
		return errdefs.InvalidArgument(fmt.Sprintf("--vcpu %d: must be between 1 and 64", req.VCPUs))
	}
	if req.MemoryMiB != 0 && (req.MemoryMiB < 128 || req.MemoryMiB > 65536) || req.MemoryMiB < 0 {
		return errdefs.InvalidArgument(fmt.Sprintf("--mem %d: must be between 128 and 65536 MiB", req.MemoryMiB))
	}
	if req.Disk != "" {
		if _, err := config.ParseSize(req.Disk); err != nil {
			return errdefs.InvalidArgument("--disk: " + err.Error())
		}
	}
	return nil
}
