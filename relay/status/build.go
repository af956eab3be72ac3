package status

import (
	"cmp"
	"runtime/debug"
)

// Build identifies the running binary, from the build info Go stamps into
// it (module version, VCS revision; no -ldflags needed).
type Build struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"` // 12 hex digits, "+dirty" for a modified tree
	GoVersion string `json:"go_version"`
}

// stampedVersion is set at link time by the Makefile (-ldflags "-X
// github.com/o365relay/o365relay/relay/status.stampedVersion=…", from git);
// a plain `go build` leaves it empty and the module version is used.
var stampedVersion string

// ReadBuild returns this binary's Build; fields Go did not record are
// "unknown" (Version, GoVersion) or empty (Revision).
func ReadBuild() Build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Build{Version: cmp.Or(stampedVersion, "unknown"), GoVersion: "unknown"}
	}
	b := Build{Version: cmp.Or(stampedVersion, bi.Main.Version, "unknown"), GoVersion: bi.GoVersion}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(b.Revision) > 12 {
		b.Revision = b.Revision[:12]
	}
	if b.Revision != "" && dirty {
		b.Revision += "+dirty"
	}
	return b
}

// String is "VERSION (REVISION) GOVERSION", what `o365relay version` prints.
func (b Build) String() string {
	s := b.Version
	if b.Revision != "" {
		s += " (" + b.Revision + ")"
	}
	return s + " " + b.GoVersion
}
