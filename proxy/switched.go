package proxy

import "sync"

// switched holds the connections to backends that answered 101 Switching
// Protocols (WebSockets and other upgrades), by upstream name, so that
// they can be ended before their backend is stopped. The zero value is
// ready to use.
type switched struct {
	mu sync.Mutex
	m  map[string]map[*doneRWC]struct{}
}

func (s *switched) track(name string, d *doneRWC) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]map[*doneRWC]struct{}{}
	}
	if s.m[name] == nil {
		s.m[name] = map[*doneRWC]struct{}{}
	}
	s.m[name][d] = struct{}{}
	d.untrack = func() {
		s.mu.Lock()
		delete(s.m[name], d)
		s.mu.Unlock()
	}
}

// CloseSwitched closes this process's upgraded connections (WebSockets
// and the like) to the named upstream and says how many. Each client's
// side then ends as the server serving it decides: handoff.Server sends a
// WebSocket client a close frame (1012, service restart).
func (h *Handler) CloseSwitched(upstream string) int {
	h.sw.mu.Lock()
	ds := make([]*doneRWC, 0, len(h.sw.m[upstream]))
	for d := range h.sw.m[upstream] {
		ds = append(ds, d)
	}
	h.sw.mu.Unlock()
	for _, d := range ds {
		_ = d.Close()
	}
	return len(ds)
}
