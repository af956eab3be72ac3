// Package dockerfile checks the repository's Dockerfile and .dockerignore
// offline, where no Docker engine (and so no `docker build --check`) and no
// hadolint is available.
//
// It owns two checks:
//   - Lint runs BuildKit's own Dockerfile front end in lint mode - the code
//     behind `docker build --check` (rules listed at
//     https://docs.docker.com/reference/build-checks/) - with an image
//     resolver that never touches the network;
//   - Ignored evaluates .dockerignore with the same pattern matcher the
//     Docker CLI and BuildKit use, so tests can state which paths reach the
//     build context.
//
// It lives in its own Go module so the relay's module never takes the
// BuildKit dependencies.
package dockerfile

import (
	"bytes"
	"context"
	"fmt"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
)

// Finding is one build-check warning or the parse error.
type Finding struct {
	Rule string // e.g. "JSONArgsRecommended"; "error" for a parse/build error
	Line int
	Text string
}

func (f Finding) String() string { return fmt.Sprintf("line %d: %s: %s", f.Line, f.Rule, f.Text) }

// offlineResolver answers every base-image lookup with a minimal linux/amd64
// config instead of asking a registry: lint rules read the Dockerfile, not
// the image contents.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`)
	return ref, digest.FromBytes(cfg), cfg, nil
}

// Lint runs every BuildKit build check over the Dockerfile text dt, for all
// stages, and returns the findings (none means clean).
func Lint(ctx context.Context, dt []byte) ([]Finding, error) {
	src := llb.Local("dockerfile")
	def, err := src.Marshal(ctx)
	if err != nil {
		return nil, err
	}
	sm := llb.NewSourceMap(&src, "Dockerfile", "Dockerfile", dt)
	sm.Definition = def
	res, err := dockerfile2llb.DockerfileLint(ctx, dt, dockerfile2llb.ConvertOpt{
		MetaResolver: offlineResolver{},
		SourceMap:    sm,
	})
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, w := range res.Warnings {
		line := 0
		if len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		out = append(out, Finding{Rule: w.RuleName, Line: line, Text: w.Detail})
	}
	if res.Error != nil {
		line := 0
		if len(res.Error.Location.Ranges) > 0 {
			line = int(res.Error.Location.Ranges[0].Start.Line)
		}
		out = append(out, Finding{Rule: "error", Line: line, Text: res.Error.Message})
	}
	return out, nil
}

// Matcher reports whether a context-relative slash path is left out of the
// build context by a .dockerignore.
type Matcher struct {
	pm *patternmatcher.PatternMatcher
}

// ParseIgnore reads .dockerignore contents.
func ParseIgnore(data []byte) (*Matcher, error) {
	patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, err
	}
	return &Matcher{pm: pm}, nil
}

// Ignored reports whether path (or a parent directory of it) is excluded,
// the way the Docker CLI walks the context.
func (m *Matcher) Ignored(path string) (bool, error) {
	return m.pm.MatchesOrParentMatches(path)
}
