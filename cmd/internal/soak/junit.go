package soak

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// JUnit XML, the subset CI systems read (Jenkins, GitLab, GitHub
// reporters): testsuites > testsuite > testcase with failure or skipped.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Time     float64      `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       float64         `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
	SystemOut  string          `xml:"system-out,omitempty"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      float64       `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	Skipped   *junitSkipped `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

type junitSkipped struct {
	Message string `xml:"message,attr"`
}

// WriteJUnit writes the report as JUnit XML: a test case per criterion
// (suite "baton soak: criteria") and per event ("baton soak: events"); a
// direct run (--compare-direct) is a third suite whose events are informational,
// with its failed requests in its properties and output, never as failures.
func (r *Report) WriteJUnit(w io.Writer) error {
	ts := r.Start.UTC().Format(time.RFC3339)
	crit := junitSuite{Name: "baton soak: criteria", Timestamp: ts, Time: r.Duration.Seconds()}
	for _, c := range r.Criteria {
		tc := junitCase{Name: fmt.Sprintf("%s <= %s", c.Name, c.Limit), Classname: "baton.soak.criteria",
			SystemOut: fmt.Sprintf("%s: %s (limit %s). %s", c.Name, c.Value, c.Limit, c.Detail)}
		if c.Name == "completed" {
			tc.Name = "completed"
		}
		if !c.OK {
			tc.Failure = &junitFailure{Type: "criterion", Message: fmt.Sprintf("%s is %s, limit %s", c.Name, c.Value, c.Limit), Text: c.Detail}
			if c.Name == "max_failed" {
				tc.Failure.Text += "\n" + failureLines(r)
			}
		}
		crit.add(tc)
	}
	crit.Properties = r.properties()
	evs := r.eventSuite("baton soak: events", "baton.soak.events", true)
	doc := junitSuites{Name: "baton soak", Time: r.Duration.Seconds(), Suites: []junitSuite{crit, evs}}
	if r.Direct != nil {
		d := r.Direct.eventSuite("straight to the servers, without baton (for comparison; not judged)", "baton.soak.direct", false)
		d.Properties = r.Direct.properties()
		d.SystemOut = fmt.Sprintf("without baton: %d of %d requests failed (%s)\nthrough baton: %d of %d requests failed",
			r.Direct.Failed, r.Direct.Requests, kindsText(r.Direct.ByKind), r.Failed, r.Requests)
		doc.Suites = append(doc.Suites, d)
		doc.Time += r.Direct.Duration.Seconds()
	}
	for _, s := range doc.Suites {
		doc.Tests += s.Tests
		doc.Failures += s.Failures
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func (s *junitSuite) add(tc junitCase) {
	s.Tests++
	if tc.Failure != nil {
		s.Failures++
	}
	if tc.Skipped != nil {
		s.Skipped++
	}
	s.Cases = append(s.Cases, tc)
}

// eventSuite has one case per event; judged: a failed event is a failure.
func (r *Report) eventSuite(name, class string, judged bool) junitSuite {
	s := junitSuite{Name: name, Timestamp: r.Start.UTC().Format(time.RFC3339), Time: r.Duration.Seconds()}
	for i, e := range r.Events {
		// A scenario event is named by when it was scheduled, so the name
		// is the same in every run; the flag form's by when it began.
		at := e.At
		if at == 0 {
			at = e.Start.Sub(r.Start).Seconds()
		}
		tc := junitCase{
			Name:      fmt.Sprintf("%02d %s at %.1fs", i+1, e.Name(), at),
			Classname: class, Time: e.Duration().Seconds(), SystemOut: e.Detail,
		}
		switch {
		case e.Skipped:
			tc.Skipped = &junitSkipped{Message: e.Detail}
		case !e.OK && judged:
			tc.Failure = &junitFailure{Type: "event", Message: e.Name() + " failed", Text: e.Detail}
		case !e.OK:
			tc.SystemOut = "FAILED: " + e.Detail
		}
		s.add(tc)
	}
	return s
}

func (r *Report) properties() []junitProperty {
	p := func(n string, v any) junitProperty { return junitProperty{Name: n, Value: fmt.Sprint(v)} }
	return []junitProperty{
		p("mode", r.Mode), p("requests", r.Requests), p("failed", r.Failed),
		p("achieved_rate", fmt.Sprintf("%.0f", r.Achieved)), p("p99_ms", fmt.Sprintf("%.2f", r.Latency.P99)),
		p("max_ms", fmt.Sprintf("%.2f", r.Latency.Max)), p("max_hold_ms", r.Hold.Max.Milliseconds()),
	}
}

func failureLines(r *Report) string {
	var s string
	for i, f := range r.Failures {
		if i == 20 {
			s += fmt.Sprintf("... and %d more\n", r.Failed-20)
			break
		}
		s += fmt.Sprintf("at %.3fs: %s: %s (%s)\n", f.At, f.Kind, f.Error, f.URL)
	}
	return s
}

func kindsText(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var s string
	for i, k := range sortedKeys(m) {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s: %d", k, m[k])
	}
	return s
}
