package delivery

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestCollectorsRegisterPedantically(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
