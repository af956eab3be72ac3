package envelope

import (
	"sort"
	"testing"
	"time"
)

func TestIDSortsByTimeAndValidates(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var ids []string
	seen := map[ID]bool{}
	for i := 0; i < 100; i++ {
		id := NewID(t0.Add(time.Duration(i) * time.Millisecond))
		if !id.Valid() {
			t.Fatalf("NewID made invalid %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		ids = append(ids, string(id))
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatal("IDs do not sort by time")
	}
	for _, bad := range []ID{"", "../etc/passwd", "0123456789ABCDEFGHJKMNI", "0123456789abcdefghjkmnp"} {
		if bad.Valid() {
			t.Errorf("%q accepted", bad)
		}
	}
}
