package progress

import (
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
)

func TestMeterThrottlesAndEstimates(t *testing.T) {
	var got []api.Progress
	f := Func(func(p api.Progress) { got = append(got, p) })
	clock := time.Unix(0, 0)
	m := f.NewMeter("download", "bytes", 1000)
	m.now = func() time.Time { return clock }
	m.start = clock
	clock = clock.Add(2 * time.Second)
	m.Set(250, "a") // reported: 250 in 2 s, 750 left at that rate = 6 s
	m.Set(300, "b") // throttled: same instant
	clock = clock.Add(time.Second)
	m.Add(200, "c") // 500 in 3 s: 3 s left
	m.Finish("done")
	if len(got) != 3 {
		t.Fatalf("reports %+v", got)
	}
	if got[0].Done != 250 || got[0].Total != 1000 || got[0].Unit != "bytes" || got[0].ETASeconds != 6 {
		t.Errorf("first %+v", got[0])
	}
	if got[1].Done != 500 || got[1].ETASeconds != 3 || got[1].Detail != "c" {
		t.Errorf("second %+v", got[1])
	}
	if got[2].Done != 1000 || got[2].ETASeconds != 0 {
		t.Errorf("finish %+v", got[2])
	}
}

func TestMeterExpectedDurationAndShortTotal(t *testing.T) {
	var last api.Progress
	f := Func(func(p api.Progress) { last = p })
	clock := time.Unix(0, 0)
	m := f.NewMeter("debootstrap", "steps", 100)
	m.now, m.start = func() time.Time { return clock }, clock
	m.Expect(60 * time.Second)
	clock = clock.Add(20 * time.Second)
	m.Set(90, "x") // fast steps first: the expected duration says 40 s left
	if last.ETASeconds != 40 {
		t.Errorf("eta %v", last.ETASeconds)
	}
	clock = clock.Add(time.Second)
	m.Set(150, "y") // more than the estimate: the total grows, never below done
	if last.Done != 150 || last.Total <= 150 {
		t.Errorf("overflow %+v", last)
	}
}

func TestStepsAndNil(t *testing.T) {
	var got api.Progress
	f := Func(func(p api.Progress) { got = p }).Steps("a", "b", "c")
	f.Phase("b", "x")
	if got.Step != 2 || got.Steps != 3 {
		t.Errorf("%+v", got)
	}
	f.Phase("other", "")
	if got.Step != 0 {
		t.Errorf("%+v", got)
	}
	var none Func
	none.Phase("a", "b") // no panic
	none.NewMeter("x", "bytes", 1).Finish("")
	if none.Steps("a") != nil {
		t.Error("Steps of nil is not nil")
	}
}
