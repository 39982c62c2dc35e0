//! The seed's `AddProc` example, runnable: `cargo run --example seed_add`.
//! The body is exactly as the seed wrote it; only the `use` lines and `main` are ours.

// The seed declares `pub enum Event` inside a function body.
#![allow(unreachable_pub)]

use drover::{DriveMode, Process, State, spawn};
use std::rc::Rc;
use tokio::sync::Mutex;

#[tokio::main(flavor = "current_thread")]
#[rustfmt::skip]
async fn main() {
        #[derive(Default, PartialEq, Clone, Debug)]
        enum DummyState {
            #[default]
            Begin,
            End,
        }

        #[derive(Debug)]
        pub enum Event {
            Run,
            Pause,
            Terminate,
        }

        impl State for DummyState {
            fn is_done(&self) -> bool {
                self == &DummyState::End
            }

            // never paused
            fn is_paused(&self) -> bool {
                false
            }
        }

        impl DummyState {
            fn next(self, event: Event) -> Self {
                match (self, event) {
                    (DummyState::Begin, Event::Run | Event::Terminate) => DummyState::End,
                    (s, e) => {
                        panic!("Wrong state, event combination: state - {s:#?}, event - {e:#?}")
                    }
                }
            }
        }

        #[derive(Debug)]
        struct AddProc {
            state: DummyState,
            inp1: i32,
            inp2: i32,
            output: Option<i32>,
        }

        impl Process<DummyState> for AddProc {
            fn state(&self) -> &DummyState {
                &self.state
            }
            fn transition_to(&mut self, state: DummyState) {
                self.state = state;
            }
            fn is_done(&self) -> bool {
                self.state().is_done()
            }
            fn is_paused(&self) -> bool {
                self.state().is_paused()
            }
            async fn kill(&mut self) {
                self.state = self.state.clone().next(Event::Terminate);
            }
            async fn pause(&mut self) {
                self.state = self.state.clone().next(Event::Pause);
            }
            async fn advance(&mut self) {
                self.state = match self.state {
                    DummyState::Begin => {
                        self.output = Some(self.inp1 + self.inp2);
                        println!(
                            "Computed {} + {} = {}",
                            self.inp1,
                            self.inp2,
                            self.output.unwrap()
                        );
                        self.state.clone().next(Event::Run)
                    }
                    DummyState::End => unreachable!(),
                }
            }
        }

        impl AddProc {
            fn new(inp1: i32, inp2: i32) -> Rc<Mutex<AddProc>> {
                Rc::new(Mutex::new(AddProc {
                    state: DummyState::Begin,
                    inp1,
                    inp2,
                    output: None,
                }))
            }
        }

        let local = tokio::task::LocalSet::new();
        let proc = AddProc::new(6, 4);

        local
            .run_until(async {
                let handler = spawn(&local, &proc, DriveMode::FireAndForget);
                assert!(handler.try_nudge().is_ok());
                handler.until_completion().await;
            })
            .await;

        assert_eq!(proc.lock().await.state(), &DummyState::End);
        assert_eq!(proc.lock().await.output, Some(6 + 4));
}
