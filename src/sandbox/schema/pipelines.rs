//! The deal pipeline and the owners every sandbox portal has.

/// A deal stage of the default pipeline.
pub struct Stage {
    pub id: &'static str,
    pub label: &'static str,
    pub display_order: u32,
    pub probability: &'static str,
    pub closed: bool,
}

pub const PIPELINE_ID: &str = "default";
pub const PIPELINE_LABEL: &str = "Sales Pipeline";

pub const STAGES: &[Stage] = &[
    Stage {
        id: "appointmentscheduled",
        label: "Appointment Scheduled",
        display_order: 0,
        probability: "0.2",
        closed: false,
    },
    Stage {
        id: "qualifiedtobuy",
        label: "Qualified To Buy",
        display_order: 1,
        probability: "0.4",
        closed: false,
    },
    Stage {
        id: "presentationscheduled",
        label: "Presentation Scheduled",
        display_order: 2,
        probability: "0.6",
        closed: false,
    },
    Stage {
        id: "decisionmakerboughtin",
        label: "Decision Maker Bought-In",
        display_order: 3,
        probability: "0.8",
        closed: false,
    },
    Stage {
        id: "contractsent",
        label: "Contract Sent",
        display_order: 4,
        probability: "0.9",
        closed: false,
    },
    Stage {
        id: "closedwon",
        label: "Closed Won",
        display_order: 5,
        probability: "1.0",
        closed: true,
    },
    Stage {
        id: "closedlost",
        label: "Closed Lost",
        display_order: 6,
        probability: "0.0",
        closed: true,
    },
];

pub fn stage(id: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.id == id)
}

/// A CRM user records can be assigned to.
pub struct Owner {
    pub id: &'static str,
    pub email: &'static str,
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub user_id: u64,
}

pub const OWNERS: &[Owner] = &[
    Owner {
        id: "101",
        email: "ada@sandbox.example",
        first_name: "Ada",
        last_name: "Lovelace",
        user_id: 9_000_101,
    },
    Owner {
        id: "102",
        email: "grace@sandbox.example",
        first_name: "Grace",
        last_name: "Hopper",
        user_id: 9_000_102,
    },
    Owner {
        id: "103",
        email: "alan@sandbox.example",
        first_name: "Alan",
        last_name: "Turing",
        user_id: 9_000_103,
    },
];
