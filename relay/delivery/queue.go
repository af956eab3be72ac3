package delivery

import (
	"container/heap"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// dueQueue holds the messages waiting for their next attempt, earliest due
// first; equal times go oldest message first (IDs sort by arrival). Picking
// the next message, adding one and moving one are O(log n), so a worker's
// pick costs the same with 100,000 queued as with 10.
type dueQueue struct {
	items []*dueItem
	pos   map[envelope.ID]*dueItem
}

type dueItem struct {
	id  envelope.ID
	at  int64 // Unix ns: 8 bytes instead of time.Time's 24, times 100,000
	idx int
}

func newDueQueue() *dueQueue { return &dueQueue{pos: map[envelope.ID]*dueItem{}} }

func (q *dueQueue) Len() int { return len(q.items) }
func (q *dueQueue) Less(i, j int) bool {
	a, b := q.items[i], q.items[j]
	if a.at != b.at {
		return a.at < b.at
	}
	return a.id < b.id
}
func (q *dueQueue) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].idx, q.items[j].idx = i, j
}
func (q *dueQueue) Push(x any) {
	it := x.(*dueItem)
	it.idx = len(q.items)
	q.items = append(q.items, it)
}
func (q *dueQueue) Pop() any {
	n := len(q.items)
	it := q.items[n-1]
	q.items[n-1] = nil
	q.items = q.items[:n-1]
	return it
}

// set makes id due at at (adding it, or moving it).
func (q *dueQueue) set(id envelope.ID, at time.Time) {
	if it := q.pos[id]; it != nil {
		it.at = at.UnixNano()
		heap.Fix(q, it.idx)
		return
	}
	it := &dueItem{id: id, at: at.UnixNano()}
	q.pos[id] = it
	heap.Push(q, it)
}

// when returns id's due time.
func (q *dueQueue) when(id envelope.ID) (time.Time, bool) {
	if it := q.pos[id]; it != nil {
		return time.Unix(0, it.at).In(time.UTC), true
	}
	return time.Time{}, false
}

// peek returns the earliest due message.
func (q *dueQueue) peek() (envelope.ID, time.Time, bool) {
	if len(q.items) == 0 {
		return "", time.Time{}, false
	}
	return q.items[0].id, time.Unix(0, q.items[0].at).In(time.UTC), true
}

// remove takes id out; false if it was not queued.
func (q *dueQueue) remove(id envelope.ID) bool {
	it := q.pos[id]
	if it == nil {
		return false
	}
	heap.Remove(q, it.idx)
	delete(q.pos, id)
	return true
}
