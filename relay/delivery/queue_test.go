package delivery

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// TestDueQueueOrder: the earliest due first, equal times oldest ID first;
// moving and removing keep the order.
func TestDueQueueOrder(t *testing.T) {
	t.Parallel()
	q := newDueQueue()
	var ids []envelope.ID
	for i := range 200 {
		ids = append(ids, envelope.NewID(t0.Add(time.Duration(i)*time.Millisecond)))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, i := range r.Perm(len(ids)) {
		q.set(ids[i], t0) // all due at once: a backlog
	}
	q.set(ids[5], t0.Add(time.Hour)) // deferred
	q.remove(ids[7])
	var got []envelope.ID
	for q.Len() > 0 {
		id, _, _ := q.peek()
		q.remove(id)
		got = append(got, id)
	}
	var want []envelope.ID
	for i, id := range ids {
		if i != 5 && i != 7 {
			want = append(want, id)
		}
	}
	want = append(want, ids[5])
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("order %v\nwant  %v", got, want)
	}
}

// BenchmarkPick is a worker's pick and the message's return to the queue
// (deferred), with n messages queued: O(log n), so the drain rate does not
// fall as the backlog grows (the previous scan of a map was O(n): about
// 100 times slower at 100,000 than at 1,000).
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprint("queued=", n), func(b *testing.B) {
			q := newDueQueue()
			for i := range n {
				q.set(envelope.NewID(t0.Add(time.Duration(i)*time.Millisecond)), t0.Add(time.Duration(i)*time.Millisecond))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				id, _, _ := q.peek()
				q.remove(id)
				q.set(id, t0.Add(time.Duration(n+i)*time.Millisecond))
			}
		})
	}
}
