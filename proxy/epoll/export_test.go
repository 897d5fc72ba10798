package epoll

// HandedOver is how many connections s handed over to net/http.
func HandedOver(s *Server) int64 { return s.handed.Load() }
